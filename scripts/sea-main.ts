// Entry of the single executable: scripts/build-binary.ts bundles this file into one CommonJS script.
// Import order is evaluation order: the assets are registered before the CLI starts the gateway.
import './sea-setup.js'
import '../gateway/cli.js'
