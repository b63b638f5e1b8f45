#!/usr/bin/env bash
# The Debian packages the test suite needs, these peers included, are installed by
# tools/system-packages.sh, which `make test` runs; this name stays for the messages and
# documents that point here. Root or sudo as that script says.
exec bash "$(dirname "$0")/../../tools/system-packages.sh" test
