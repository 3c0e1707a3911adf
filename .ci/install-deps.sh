#!/usr/bin/env bash
# install-deps.sh: installs the Debian packages hax needs to build and test
# (run as root; does nothing when everything is already there).
set -eu
PKGS="build-essential openmpi-bin libopenmpi-dev libyaml-dev libopenblas-dev python3-numpy slurm-wlm munge"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "hax: missing Debian packages:$missing (run this script as root, or install them)" >&2
    exit 1
fi
echo "hax: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
