/**
 * The version of this build. `scripts/compile.sh` rewrites it from `git describe` before compiling.
 */
export const VERSION = "0.1.0-dev";
