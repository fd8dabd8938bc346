#!/usr/bin/env bash
# Fails if the committed artifacts/ differ from a clean build of src/: someone
# changed a contract without running build.sh (or the toolchain drifted).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# A private out/ and cache/ so the build is clean and the developer's own
# out/ is left alone.
"$here/build.sh" "$tmp/out" "$tmp/cache" "$tmp/artifacts" 2>"$tmp/build.log" || {
  cat "$tmp/build.log" >&2
  exit 1
}
if ! diff -ru "$here/artifacts" "$tmp/artifacts" >"$tmp/diff"; then
  echo "contracts/artifacts is stale: run contracts/build.sh and commit the result." >&2
  head -c 4000 "$tmp/diff" >&2
  exit 1
fi
echo "artifacts fresh: $(ls "$tmp/artifacts" | tr '\n' ' ')"
