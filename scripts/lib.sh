# Sourced by the scripts in this folder: where the project is and which Python runs it.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The project's virtual environment when there is one (plain install), else the
# interpreter on PATH (the Docker images install into the system Python).
if [ -x "$ROOT/.venv/bin/python" ]; then
  PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
  export PATH="$ROOT/.venv/bin:$PATH"
else
  PYTHON="${PYTHON:-python3}"
fi
