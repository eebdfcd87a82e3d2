#!/usr/bin/env bash
# Run the add-on tests on every Blender version we support, each in its own venv with the bpy wheel:
#   .venv-bpy42  bpy 4.2 LTS (sequences API)      .venv  bpy 4.5 LTS (main venv)      .venv-bpy50  bpy 5.0 (strips only)
# The 4.2/5.0 venvs hold only bpy + numpy<2 + pyzmq + pillow + pytest; they are created on first use.
# The e2e tests start `frameprompt serve` with the main .venv's Python (torch lives there, never in bpy's).
# Usage: bash scripts/test_blender_versions.sh [42|45|50 ...] [-- extra pytest args]
set -uo pipefail
cd "$(dirname "$0")/.."

versions=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do versions+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#versions[@]} -eq 0 ] && versions=(42 45 50)

declare -A VENV=([42]=.venv-bpy42 [45]=.venv [50]=.venv-bpy50)
declare -A SPEC=([42]="bpy==4.2.*" [45]="bpy==4.5.*" [50]="bpy==5.0.*")
TESTS=(tests/blender tests/test_manifest.py tests/test_addon_no_torch.py)

export FRAMEPROMPT_BACKEND_PYTHON=${FRAMEPROMPT_BACKEND_PYTHON:-$PWD/.venv/bin/python}
status=0
summary=()
for v in "${versions[@]}"; do
  venv=${VENV[$v]:-}
  if [ -z "$venv" ]; then echo "unknown version $v (use 42, 45 or 50)"; exit 2; fi
  if [ ! -x "$venv/bin/python" ]; then
    if [ "$v" = 45 ]; then echo "no .venv: run scripts/setup.sh first"; exit 2; fi
    echo "== creating $venv (${SPEC[$v]})"
    python3.11 -m venv "$venv" || exit 2
    "$venv/bin/pip" install -q "${SPEC[$v]}" "numpy<2" pyzmq pillow pytest pytest-timeout || exit 2
  fi
  ver=$("$venv/bin/python" -c "import bpy; print(bpy.app.version_string)" 2>/dev/null | tail -1)
  echo "== bpy $ver ($venv)"
  start=$(date +%s)
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$venv/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}" "$@" \
    2>&1 | grep -v "^Freeing memory after the leak detector"
  rc=${PIPESTATUS[0]}
  summary+=("bpy $ver: rc=$rc ($(( $(date +%s) - start )) s)")
  [ "$rc" -ne 0 ] && status=1
done
printf '%s\n' "== summary" "${summary[@]}"
exit $status
