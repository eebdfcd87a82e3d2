#!/usr/bin/env bash
# Set up (if needed) and run the main job headless: the embedded demo scene in Blender -> backend server
# -> N animated frames -> video.mp4 and a .blend with the frames as a Sequencer strip, under out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/frameprompt demo --out out/demo "$@"
