# Sourced by the scripts: point CORRLIB_DATA at ../shared/data when it is not set and that folder exists.
if [ -z "${CORRLIB_DATA:-}" ] && [ -d "$(pwd)/../shared/data" ]; then
  CORRLIB_DATA="$(cd "$(pwd)/../shared/data" && pwd)"
  export CORRLIB_DATA
fi
