#!/bin/sh
# Runs before anything else in the stack (service `preflight`): refuses empty, placeholder or short
# secrets, so that a copied docker/.env.example cannot start a server anyone could log into.
# Run it by hand to check a docker/.env:  set -a; . docker/.env; set +a; sh docker/preflight.sh
fail=0
weak() {  # name value minimum-length
  case "$(printf %s "$2" | tr 'A-Z' 'a-z')" in
    ""|*change-me*|*changeme*|password*|passw0rd*|secret*|admin*|postgres*|mlflow*|minio*|12345678*|example*)
      echo "preflight: $1 is empty or a placeholder; set a real one in docker/.env (e.g. openssl rand -hex 16)" >&2
      fail=1 ;;
    *)
      if [ "${#2}" -lt "$3" ]; then
        echo "preflight: $1 is shorter than $3 characters; set a longer one in docker/.env" >&2
        fail=1
      fi ;;
  esac
}
weak POSTGRES_PASSWORD "$POSTGRES_PASSWORD" 12
# Optional secrets: checked when set (the auth profile requires its own, compose says so when missing).
[ -n "$MLFLOW_AUTH_ADMIN_PASSWORD" ] && weak MLFLOW_AUTH_ADMIN_PASSWORD "$MLFLOW_AUTH_ADMIN_PASSWORD" 12
[ -n "$MLFLOW_FLASK_SERVER_SECRET_KEY" ] && weak MLFLOW_FLASK_SERVER_SECRET_KEY "$MLFLOW_FLASK_SERVER_SECRET_KEY" 32
[ -n "$AWS_SECRET_ACCESS_KEY" ] && weak AWS_SECRET_ACCESS_KEY "$AWS_SECRET_ACCESS_KEY" 12
if [ "$fail" -ne 0 ]; then
  exit 1
fi
echo "preflight: secrets set"
