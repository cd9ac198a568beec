#!/usr/bin/env bash
# Offline validation tools for deploy/k8s, installed once and cached by version:
#   kustomize            Go module sigs.k8s.io/kustomize/kustomize/v5 (go install, ~35 s once)
#   kubernetes-validate  PyPI package that ships the Kubernetes JSON schemas (no network at use)
#
#   deploy/k8s/tools.sh install   install what is missing (needs Go and uv; registries only)
#   deploy/k8s/tools.sh env       print KUSTOMIZE=... and KUBERNETES_VALIDATE=... (exit 1 if missing)
#   deploy/k8s/tools.sh validate  build every overlay and validate it (what tests/test_k8s.py does)
#   deploy/k8s/tools.sh secret    print the Namespace eostream and a Secret eostream-secrets with
#                                 fresh random values, for a laptop cluster:
#                                 deploy/k8s/tools.sh secret | kubectl apply -f -
#
# Cache: ${EOSTREAM_CACHE:-$HOME/.cache/eostream}/tools/<tool>-<version>/
set -euo pipefail

KUSTOMIZE_VERSION="v5.8.1"
KUBERNETES_VALIDATE_VERSION="1.37.0"
# The Kubernetes version the manifests are checked against (schemas bundled in the package).
KUBERNETES_SCHEMA_VERSION="1.32.0"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${EOSTREAM_CACHE:-$HOME/.cache/eostream}"
KUSTOMIZE_DIR="$CACHE/tools/kustomize-$KUSTOMIZE_VERSION"
KV_DIR="$CACHE/tools/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
KUSTOMIZE="$KUSTOMIZE_DIR/kustomize"
KUBERNETES_VALIDATE="$KV_DIR/bin/kubernetes-validate"

die() {
    printf 'k8s tools: error: %s\n' "$*" >&2
    exit 1
}

install_kustomize() {
    [[ -x "$KUSTOMIZE" ]] && return 0
    command -v go >/dev/null || die "Go is needed to build kustomize $KUSTOMIZE_VERSION (apt-get install golang, or https://go.dev/dl)"
    printf 'k8s tools: building kustomize %s (go install, once)\n' "$KUSTOMIZE_VERSION" >&2
    local tmp
    tmp="$(mktemp -d "$CACHE/tools/.kustomize.XXXXXX")"
    GOBIN="$tmp" GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" ||
        { rm -rf "$tmp"; die "go install of kustomize $KUSTOMIZE_VERSION failed"; }
    rm -rf "$KUSTOMIZE_DIR"
    mv "$tmp" "$KUSTOMIZE_DIR" # atomic: a half-built tool is never seen as installed
}

install_kubernetes_validate() {
    [[ -f "$KV_DIR/.complete" ]] && return 0
    command -v uv >/dev/null || die "uv is needed to install kubernetes-validate (https://docs.astral.sh/uv/)"
    printf 'k8s tools: installing kubernetes-validate %s (once)\n' "$KUBERNETES_VALIDATE_VERSION" >&2
    rm -rf "$KV_DIR"
    if ! { uv venv -q --python 3.11 "$KV_DIR" &&
        uv pip install -q --python "$KV_DIR/bin/python" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"; }; then
        rm -rf "$KV_DIR"
        die "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION failed"
    fi
    touch "$KV_DIR/.complete" # only a finished install counts
}

cmd_install() {
    mkdir -p "$CACHE/tools"
    install_kustomize
    install_kubernetes_validate
    cmd_env
}

cmd_env() {
    [[ -x "$KUSTOMIZE" ]] || die "kustomize $KUSTOMIZE_VERSION is not installed: run $0 install"
    [[ -f "$KV_DIR/.complete" ]] || die "kubernetes-validate is not installed: run $0 install"
    printf 'KUSTOMIZE=%s\nKUBERNETES_VALIDATE=%s\nKUBERNETES_SCHEMA_VERSION=%s\n' \
        "$KUSTOMIZE" "$KUBERNETES_VALIDATE" "$KUBERNETES_SCHEMA_VERSION"
}

cmd_validate() {
    cmd_install >/dev/null
    local overlay out
    out="$(mktemp -d)"
    trap 'rm -rf "$out"' RETURN
    for overlay in "$HERE"/overlays/*/; do
        overlay="$(basename "$overlay")"
        "$KUSTOMIZE" build "$HERE/overlays/$overlay" >"$out/$overlay.yaml"
        "$KUBERNETES_VALIDATE" --strict --quiet -k "$KUBERNETES_SCHEMA_VERSION" "$out/$overlay.yaml"
        printf 'overlays/%s: %s objects, valid against Kubernetes %s\n' "$overlay" \
            "$(grep -c '^kind:' "$out/$overlay.yaml")" "$KUBERNETES_SCHEMA_VERSION"
    done
}

cmd_secret() {
    # random, URL-safe values (pg-password is embedded in connection URLs); nothing published
    python3 - <<'PY'
import base64
import os
import secrets

keys = ["s3-secret-key", "pg-password", "inference-api-key", "mlflow-webhook-secret",
        "bridge-operator-key", "mlflow-admin-password", "mlflow-trainer-password",
        "mlflow-bridge-password", "mlflow-secret-key"]
# the namespace first: on a new cluster the overlay that makes it is applied after the Secret
print("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: eostream\n---")
print("apiVersion: v1\nkind: Secret\nmetadata:\n  name: eostream-secrets\n  namespace: eostream")
print("type: Opaque\nstringData:\n  s3-access-key: eostream")
for key in keys:
    print(f"  {key}: {secrets.token_urlsafe(24)}")
# a Fernet key: MLflow encrypts the stored webhook secrets with it
print(f"  mlflow-webhook-encryption-key: {base64.urlsafe_b64encode(os.urandom(32)).decode()}")
PY
}

case "${1:-}" in
    install) cmd_install ;;
    env) cmd_env ;;
    validate) cmd_validate ;;
    secret) cmd_secret ;;
    *) die "usage: $0 install|env|validate|secret" ;;
esac
