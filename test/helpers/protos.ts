// A .proto pair (one importing the other and a google/protobuf type) for protobuf decoding tests.
import fs from 'node:fs'
import path from 'node:path'

export const READING_PROTO = `syntax = "proto3";
package demo.v1;
import "google/protobuf/timestamp.proto";
import "units.proto";

message Reading {
  string sensor_id = 1;
  double value = 2;
  Unit unit = 3;
  uint64 counter = 4;
  bytes raw = 5;
  repeated float samples = 6;
  Location where = 7;
  google.protobuf.Timestamp taken = 8;
  int64 epoch_ms = 9;
  message Location { double lat = 1; double lon = 2; }
}
`
export const UNITS_PROTO = `syntax = "proto3";
package demo.v1;
enum Unit { UNIT_UNSPECIFIED = 0; CELSIUS = 1; KELVIN = 2; }
`

export function writeProtos (dir: string): string {
  fs.writeFileSync(path.join(dir, 'reading.proto'), READING_PROTO)
  fs.writeFileSync(path.join(dir, 'units.proto'), UNITS_PROTO)
  return path.join(dir, 'reading.proto')
}
