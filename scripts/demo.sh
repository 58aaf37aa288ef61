#!/usr/bin/env bash
# `make demo`: Redis on a private port, the companion, the demo app and Envoy with the filter,
# all in the foreground, with a fresh hash key (DEMO_HASH_KEY). Ctrl-C stops all of them. Ports: DEMO_PORT (10000), DEMO_REDIS_PORT
# (16379), DEMO_COMPANION_PORT (18080), DEMO_APP_PORT (18081), DEMO_ADMIN_PORT (19901).
# DEMO_APP=django (make demo-django) serves the Django REST framework example (examples/django)
# with gunicorn instead of the Rust demo app. FILTER=native (make demo FILTER=native) runs the
# native Envoy dynamic module (envoy/native/envoy.yaml, target/native) instead of the wasm filter.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
DEMO_PORT="${DEMO_PORT:-10000}"
REDIS_PORT="${DEMO_REDIS_PORT:-16379}"
COMPANION_PORT="${DEMO_COMPANION_PORT:-18080}"
APP_PORT="${DEMO_APP_PORT:-18081}"
ADMIN_PORT="${DEMO_ADMIN_PORT:-19901}"
ENVOY="${ENVOY_BIN:-$root/.tools/bin/envoy}"
BIN="${DEMO_BIN_DIR:-$root/target/release}"
ADMIN_KEY="demo-admin-key-change-me-please"
INTERNAL_KEY="demo-internal-key-change-me"
# a fresh hash key per run (256 random bits): the companion digests with it, the filter checks
# tokens' MACs with it; envoy/envoy.yaml holds a placeholder the filter refuses
# (DEMO_HASH_KEY sets it instead, e.g. to keep tokens across demo runs on one Redis)
HASH_KEY="${DEMO_HASH_KEY:-$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')}"

case "${FILTER:-wasm}" in
  wasm) envoy_config=envoy/envoy.yaml; filter_name="multitokens filter (wasm)" ;;
  native) envoy_config=envoy/native/envoy.yaml; filter_name="multitokens native module" ;;
  *) echo "demo: FILTER must be wasm or native, not ${FILTER}" >&2; exit 2 ;;
esac

work="$(mktemp -d -t multitokens-demo.XXXXXX)"
pids=()
names=()
keep_logs=0
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$keep_logs" = 1 ]; then echo "demo: logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
# Ctrl-C (or SIGTERM) is the way to stop the demo: clean up and end quietly
trap 'echo; echo "demo: stopping"; cleanup; exit 0' INT TERM

for port in "$DEMO_PORT" "$REDIS_PORT" "$COMPANION_PORT" "$APP_PORT" "$ADMIN_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port is already in use (set DEMO_PORT for the listener)" >&2
    exit 1
  fi
done

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "demo: $2 did not start on port $1" >&2
  keep_logs=1
  exit 1
}

# Redis runs the shipped least-privilege users (envoy/redis/users.acl) with a fresh password and the
# default user off, as every shipped stack does: the companion connects as mt-companion
# (DEMO_REDIS_PASSWORD sets the password instead)
REDIS_PASSWORD="${DEMO_REDIS_PASSWORD:-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')}"
{ echo 'user default off'
  grep '^user ' "$root/envoy/redis/users.acl" | sed -e "s|>change-me-companion|>$REDIS_PASSWORD|" -e "s|>change-me-gateway|>$REDIS_PASSWORD-gateway|"
} >"$work/users.acl"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work" --save "" --appendonly no --aclfile "$work/users.acl" \
  >"$work/redis.log" 2>&1 &
pids+=($!); names+=(redis-server)
wait_port "$REDIS_PORT" redis-server
REDIS_URL="redis://mt-companion:$REDIS_PASSWORD@127.0.0.1:$REDIS_PORT/0"

# and a fresh record signing key: the companion signs every record (only it holds the key)
# (DEMO_SIGNING_KEY sets it instead)
SIGNING_KEY="${DEMO_SIGNING_KEY:-$("$BIN/multitokens" keygen --signing | sed -n 's/^signing_key=//p')}"
MULTITOKENS_REDIS_URL="$REDIS_URL" \
MULTITOKENS_ADMIN_KEY="$ADMIN_KEY" MULTITOKENS_INTERNAL_KEY="$INTERNAL_KEY" MULTITOKENS_HASH_KEY="$HASH_KEY" \
MULTITOKENS_SIGNING_KEY="$SIGNING_KEY" "$BIN/multitokens" serve --listen "127.0.0.1:$COMPANION_PORT" 2>"$work/companion.log" &
pids+=($!); names+=("the companion")
wait_port "$COMPANION_PORT" "the companion"

if [ "${DEMO_APP:-}" = django ]; then
  django_env=(env PYTHONPATH="$root/.tools/django" DJANGO_DB="$work/db.sqlite3"
              MULTITOKENS_URL="http://127.0.0.1:$COMPANION_PORT" MULTITOKENS_ADMIN_KEY="$ADMIN_KEY")
  (cd examples/django && "${django_env[@]}" python3 manage.py migrate -v 0 && "${django_env[@]}" python3 manage.py seed_demo_users >/dev/null)
  (cd examples/django && exec "${django_env[@]}" python3 -m gunicorn mtdemo.wsgi --bind "127.0.0.1:$APP_PORT" --workers 2) 2>"$work/app.log" &
  pids+=($!); names+=("the Django app")
  wait_port "$APP_PORT" "the Django app"
  login_body='{"username":"alice","password":"demo-password","device":"laptop"}'
else
  DEMO_APP_LISTEN="127.0.0.1:$APP_PORT" MULTITOKENS_URL="http://127.0.0.1:$COMPANION_PORT" MULTITOKENS_ADMIN_KEY="$ADMIN_KEY" \
    "$BIN/multitokens-demo-app" 2>"$work/app.log" &
  pids+=($!); names+=("the demo app")
  wait_port "$APP_PORT" "the demo app"
  login_body='{"user":"alice","device":"laptop"}'
fi

sed -e "s/port_value: 10000/port_value: $DEMO_PORT/" -e "s/port_value: 18080/port_value: $COMPANION_PORT/" \
    -e "s/port_value: 18081/port_value: $APP_PORT/" -e "s/port_value: 19901/port_value: $ADMIN_PORT/" \
    -e "s/REPLACE-ME-with-multitokens-keygen/$HASH_KEY/" "$envoy_config" >"$work/envoy.yaml"
ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$root/target/native" \
  "$ENVOY" -c "$work/envoy.yaml" --concurrency 2 --log-level warn 2>"$work/envoy.log" &
pids+=($!); names+=(Envoy)
wait_port "$DEMO_PORT" Envoy

cat <<EOT
multitokens demo is up (Ctrl-C stops everything):
  Envoy + $filter_name  http://127.0.0.1:$DEMO_PORT   (admin, stats: http://127.0.0.1:$ADMIN_PORT/stats?filter=multitokens)
  companion API               http://127.0.0.1:$COMPANION_PORT  (admin key: $ADMIN_KEY)
  demo app                    http://127.0.0.1:$APP_PORT
  redis-server                127.0.0.1:$REDIS_PORT (users of envoy/redis/users.acl, default user off; data in $work, removed on exit)

In another shell, these make every CLI and API example of the docs work against this demo:
  export PATH="$root/target/release:$root/.tools/bin:\$PATH"
  export MULTITOKENS_REDIS_URL=$REDIS_URL MULTITOKENS_ADMIN_KEY=$ADMIN_KEY MULTITOKENS_HASH_KEY=$HASH_KEY MULTITOKENS_SIGNING_KEY=$SIGNING_KEY
  export DEMO=http://127.0.0.1:$DEMO_PORT API=http://127.0.0.1:$COMPANION_PORT

Try it:
  TOKEN=\$(curl -s -X POST \$DEMO/login -H 'content-type: application/json' \\
           -d '$login_body' | sed -E 's/.*"token":"([^"]+)".*/\1/')
  curl -s \$DEMO/api/whoami -H "Authorization: Bearer \$TOKEN"
  curl -s -X POST \$DEMO/logout -H "Authorization: Bearer \$TOKEN"
  curl -s -i \$DEMO/api/whoami -H "Authorization: Bearer \$TOKEN"   # 401 on the very next request: the logout returned once every Envoy worker applied it
EOT
wait -n "${pids[@]}" || true
for i in "${!pids[@]}"; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then echo "demo: ${names[$i]} exited" >&2; fi
done
tail -n 5 "$work"/*.log >&2 || true
keep_logs=1
exit 1
