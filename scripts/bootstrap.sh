# Sourced by scripts/*.sh: create .venv and install the pinned locks (idempotent).
# Installs with uv when it can (much faster), else with pip.
VENV=.venv
stamp="$VENV/.locks.sha256"
want="$(cat requirements/runtime.lock requirements/dev.lock | python3 -c 'import hashlib,sys;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing pinned dependencies into $VENV" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"  # an existing (maybe linked) venv is reused
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "uv==0.13.9" >/dev/null 2>&1 || true
  if [ -x "$VENV/bin/uv" ]; then
    "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" -r requirements/runtime.lock -r requirements/dev.lock
  else
    "$VENV/bin/python" -m pip install -q -r requirements/runtime.lock -r requirements/dev.lock
  fi
  echo "$want" > "$stamp"
fi
