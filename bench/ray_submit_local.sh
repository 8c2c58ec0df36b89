#!/usr/bin/env bash
# `ray up` + `ray submit` through Ray's cluster launcher, on this machine: docker/cluster-local.yaml
# with head_ip 127.0.0.1, reached over SSH by an sshd of this script's own (loopback, port 22, keys
# in a temporary folder). Writes a demo set (--variants 0) to OUT, verifies it, takes the cluster
# down, and puts back what the launcher changed (~/.bashrc, ~/ray_bootstrap_*, a token it made).
#
#   bash bench/ray_submit_local.sh [OUT]     # needs openssh-server and rsync; run as the user who owns .venv
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${1:-$(mktemp -d)/ray-submit-set}
for tool in /usr/sbin/sshd ssh ssh-keygen rsync; do
  command -v "$tool" >/dev/null || { echo "needs $tool (e.g. apt-get install openssh-server rsync)"; exit 2; }
done
if (exec 3<>/dev/tcp/127.0.0.1/22) 2>/dev/null; then
  echo "something already listens on 127.0.0.1:22; this script starts its own sshd there"; exit 2
fi
WORK=$(mktemp -d)
made_token=0
[ -f ~/.ray/auth_token ] || { .venv/bin/ray get-auth-token --generate >/dev/null; made_token=1; }
cp ~/.bashrc "$WORK/bashrc.orig" 2>/dev/null || touch "$WORK/no-bashrc"
cleanup() {
  .venv/bin/ray down -y "$WORK/cluster.yaml" >"$WORK/down.log" 2>&1 || true
  [ -f "$WORK/sshd.pid" ] && kill "$(cat "$WORK/sshd.pid")" 2>/dev/null || true
  if [ -f "$WORK/no-bashrc" ]; then rm -f ~/.bashrc; else cp "$WORK/bashrc.orig" ~/.bashrc; fi
  rm -f ~/ray_bootstrap_config.yaml ~/ray_bootstrap_key.pem ~/generate.py
  [ "$made_token" = 1 ] && rm -f ~/.ray/auth_token
  rm -rf "$WORK"
}
trap cleanup EXIT

ssh-keygen -q -t ed25519 -N "" -f "$WORK/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$WORK/id_ed25519"
cp "$WORK/id_ed25519.pub" "$WORK/authorized_keys"
cat >"$WORK/sshd_config" <<CONF
Port 22
ListenAddress 127.0.0.1
HostKey $WORK/host_key
AuthorizedKeysFile $WORK/authorized_keys
PasswordAuthentication no
StrictModes no
UsePAM no
PidFile $WORK/sshd.pid
CONF
mkdir -p /run/sshd 2>/dev/null || true
/usr/sbin/sshd -f "$WORK/sshd_config"
sed -e "s|HEAD_IP|127.0.0.1|" -e "s|SSH_USER|$(id -un)|" -e "s|~/.ssh/id_ed25519|$WORK/id_ed25519|" \
    -e "s|VENV_BIN|$REPO/.venv/bin|g" docker/cluster-local.yaml >"$WORK/cluster.yaml"

start=$(date +%s)
.venv/bin/ray up -y "$WORK/cluster.yaml" >"$WORK/up.log" 2>&1 || { tail -30 "$WORK/up.log"; exit 1; }
echo "ray up: head on 127.0.0.1 in $(( $(date +%s) - start )) s"
.venv/bin/ray submit "$WORK/cluster.yaml" pipeline/generate.py -- --source demo:200:48 --samples-per-shard 20 \
    --workers 2 --variants 0 --out "$OUT" --no-progress 2>&1 | grep -E "shards written per Ray node|^wrote" || {
  echo "ray submit failed"; exit 1; }
head_node=$(.venv/bin/python -c "import ray; ray.init(address='auto', logging_level='ERROR'); \
print(next(n['NodeID'] for n in ray.nodes() if n['Alive']))")
echo "the cluster's head node: ${head_node:0:12}"
.venv/bin/python -m manifests verify "$OUT"
