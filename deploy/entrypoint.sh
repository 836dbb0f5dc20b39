#!/bin/sh
# The image's entry point. A token given as a file (TIMEBANK_ADMIN_TOKEN_FILE=/run/secrets/...,
# a compose secret) becomes the variable the service reads (TIMEBANK_ADMIN_TOKEN), so no secret
# is on a command line or in the compose file. Then `timebank` runs with the arguments given.
set -eu
for name in TIMEBANK_ADMIN_TOKEN TIMEBANK_OPERATOR_TOKEN TIMEBANK_AUDITOR_TOKEN; do
    eval "file=\${${name}_FILE:-}"
    if [ -n "$file" ]; then
        value=$(cat "$file")
        export "$name=$value"
        unset "${name}_FILE"
    fi
done
exec timebank "$@"
