#!/bin/sh
# Put a `cassava convert` folder into this overlay's ConfigMap:   ./set-model.sh DIR
# Refused (exit 2) when a file is missing or the files exceed 1 MiB, Kubernetes' limit for one ConfigMap's data:
# such a model is baked into the edge image instead (deploy/README.md, "Model updates").
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=${1:?usage: set-model.sh DIR (a folder made by cassava convert)}
files="model.tflite cassava-model.json cassava-manifest.json cassava-selfcheck.npz conversion-report.json"
limit=1048576
total=0
for name in $files; do
    if [ ! -f "$src/$name" ]; then
        echo "set-model.sh: $src/$name is missing (a folder made by \`cassava convert\` has it)" >&2
        exit 2
    fi
    total=$((total + $(wc -c < "$src/$name")))
done
if [ "$total" -gt "$limit" ]; then
    echo "set-model.sh: refused: the model's files are $total bytes, above the ConfigMap limit of $limit bytes" \
         "(1 MiB); bake the model into the edge image instead (deploy/README.md)" >&2
    exit 2
fi
mkdir -p "$here/model"
for name in $files; do
    cp "$src/$name" "$here/model/$name"
done
echo "model/: $total of $limit bytes; kubectl apply -k $here"
