# Sourced by scripts/run and scripts/test: make .venv exist and match pyproject.toml.
# Installs only from the package index named by pip's own configuration; re-installs
# when pyproject.toml changes (a stamp holds its hash), so repeat runs start at once.
# $1 names the extras to install, comma-separated, as in pyproject.toml: scripts/run passes
# "server,cli" (the server, and ticketctl for the README's first steps), scripts/test "dev"
# (everything). Empty installs the partner SDK alone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TICKETING_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"
pick_python() {
  for py in python3.13 python3.12 python3.11 python3; do
    if command -v "$py" >/dev/null 2>&1 &&
      "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "ticketing needs Python 3.11 or newer (with venv); none found on PATH" >&2
  return 1
}
if [[ ! -x "$VENV/bin/python" ]]; then
  PY="$(pick_python)"
  echo "creating virtual environment in $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
fi
STAMP="$VENV/.ticketing-installed${EXTRAS:+-$EXTRAS}"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo "installing ticketing${EXTRAS:+[$EXTRAS]} into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -e "$ROOT${EXTRAS:+[$EXTRAS]}" >&2
  echo "$WANT" >"$STAMP"
fi
export PATH="$VENV/bin:$PATH"
