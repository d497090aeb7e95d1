#!/bin/sh
# System packages the napari viewer (and its headless tests) need: an X server (Xvfb), OpenGL
# (Mesa) and Qt's xcb libraries. Debian/Ubuntu; installs only what is missing (root or sudo).
PKGS="xvfb xauth libgl1 libglx-mesa0 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-cursor0 libxcb-randr0
  libxcb-xfixes0 libxcb-xkb1 libx11-xcb1 libfontconfig1 libdbus-1-3"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "viewer/system-deps.sh: no apt-get here; install the equivalents of:$missing" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "viewer/system-deps.sh: need root or sudo to install:$missing" >&2; exit 1; fi
fi
echo "installing:$missing"
$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
