#!/bin/sh
# Run a command with the image build's pip settings, dropping those left empty: pip would read an
# empty PIP_CERT as a path, and an empty PIP_FIND_LINKS as a location.
for name in PIP_CERT PIP_FIND_LINKS PIP_EXTRA_INDEX_URL; do
  eval "value=\${$name:-}"
  [ -n "$value" ] || unset "$name"
done
exec "$@"
