#!/usr/bin/env bash
# The annotation page's browser dependencies: `npm ci` of web/package-lock.json (pinned
# onnxruntime-web), then the files the page loads copied into
# engine/campaigns/static/vendor/<name>-<version>/ with vendor.json naming them, so the
# campaign server (and a pip-installed package) serves them. Run by `make vendor`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="$(cd "$here/.." && pwd)/engine/campaigns/static/vendor"
files=(ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm)

if ! command -v npm >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
    else
        echo "vendor.sh: npm is needed (install Node.js 18 or newer)" >&2
        exit 1
    fi
fi
(cd "$here" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)

package="$here/node_modules/onnxruntime-web"
version="$(node -p "require('$package/package.json').version")"
dir="onnxruntime-web-$version"
staging="$dest.partial"
rm -rf "$staging"
mkdir -p "$staging/$dir"
for file in "${files[@]}"; do
    cp "$package/dist/$file" "$staging/$dir/"
done
cp "$package/package.json" "$staging/$dir/package.json"  # name, version, licence (MIT)
cat > "$staging/vendor.json" <<JSON
{"name": "onnxruntime-web", "version": "$version", "dir": "$dir", "module": "ort.wasm.min.mjs",
 "files": ["$(IFS=,; echo "${files[*]}" | sed 's/,/", "/g')"]}
JSON
rm -rf "$dest"
mv "$staging" "$dest"
echo "vendored onnxruntime-web $version into $dest"
