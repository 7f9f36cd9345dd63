#!/usr/bin/env bash
# The guest agent, `clone exec`, the control API, `clone attach`, `clone list`/`status` and
# detached VMs, end to end: a stock Debian kernel finds Clone's vhost-vsock device through the
# DSDT, the test init starts the static clone-agent, and the host drives it.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_modules "$LAB_CLOUD_MODULES" "$E2E_WORK/modules" virtio_mmio vmw_vsock_virtio_transport
  e2e_initrd "$E2E_WORK/agent.cpio.gz" "$E2E_ROOT/tests/guest/init-agent.sh" \
    "$E2E_WORK/modules:/modules" "$(dirname "$CLONE_BIN")/clone-agent:/usr/bin/clone-agent"
}
e2e_enter_lab "$0" "$@"

export CLONE_RUNTIME_DIR=/tmp/clone-e2e-rt  # sockets cannot live on the 9p share
rm -rf "$CLONE_RUNTIME_DIR"
initrd=$E2E_WORK/agent.cpio.gz
release=$(basename "$LAB_CLOUD_MODULES")
run_vm() { # run_vm NAME [EXTRA CMDLINE]
  "$CLONE_BIN" run -d --name "$1" --kernel "$LAB_CLOUD_KERNEL" --initrd "$initrd" --mem-mb 256 \
    --cmdline "console=ttyS0 quiet panic=-1 ${2:-}" 2>"$E2E_WORK/$1.run.err"
}
sock() { echo "$CLONE_RUNTIME_DIR/vms/$1/control.sock"; }
api() { # api NAME METHOD PATH [curl args...] -> body on stdout, status in $E2E_WORK/http_code
  local name=$1 method=$2 path=$3
  shift 3
  curl -s -o "$E2E_WORK/http_body" -w '%{http_code}' --unix-socket "$(sock "$name")" -X "$method" \
    "http://localhost$path" "$@" >"$E2E_WORK/http_code" || true
  cat "$E2E_WORK/http_body"
}
code() { cat "$E2E_WORK/http_code"; }

# --- a detached VM with the agent ---
id=$(run_vm a1) || true
check "run -d prints the id" test "$id" = a1
check "run -d: the VM is listed" bash -c "'$CLONE_BIN' list | grep -q '^a1 '"
ready=0
start=$(date +%s.%N)
for _ in $(seq 1 240); do
  if "$CLONE_BIN" exec --vm-id a1 -- true 2>/dev/null; then ready=1; break; fi
  sleep 0.5
done
echo "agent answered $(awk -v a="$start" -v b="$(date +%s.%N)" "BEGIN{printf \"%.2f\", b-a}") s after launch"
check "agent reachable: clone exec -- true succeeds" test "$ready" = 1
if [[ $ready != 1 ]]; then
  cat "$CLONE_RUNTIME_DIR/vms/a1/console.log" 2>/dev/null | tail -30
  cat "$E2E_WORK/a1.run.err"
fi

out=$("$CLONE_BIN" exec -- uname -r 2>&1) || true
check "exec uname -r prints the guest kernel ($release)" test "$out" = "$release"
for _ in $(seq 1 40); do [[ $("$CLONE_BIN" exec -- hostname 2>/dev/null) == a1 ]] && break; sleep 0.25; done
out=$("$CLONE_BIN" exec -- uname -a 2>&1) || true
check "exec uname -a: Linux, hostname set to the VM id by the agent" grep -q "^Linux a1 " <<<"$out"
status=0; "$CLONE_BIN" exec -- sh -c 'exit 3' || status=$?
check "exit code 3 propagates" test "$status" = 3
status=0; "$CLONE_BIN" exec -- true || status=$?
check "exit code 0 propagates" test "$status" = 0
status=0; "$CLONE_BIN" exec -- sh -c 'kill -9 $$' || status=$?
check "death by SIGKILL -> 137" test "$status" = 137
status=0; "$CLONE_BIN" exec -- /no/such/command 2>"$E2E_WORK/missing.err" || status=$?
check "missing command -> 127" test "$status" = 127
out=$(echo hi | "$CLONE_BIN" exec -i -- cat) || true
check "echo hi | clone exec -i -- cat" test "$out" = hi
"$CLONE_BIN" exec -- sh -c 'echo to-out; echo to-err >&2' >"$E2E_WORK/o.txt" 2>"$E2E_WORK/e.txt" || true
check "stdout and stderr are separate" bash -c "grep -qx to-out '$E2E_WORK/o.txt' && grep -qx to-err '$E2E_WORK/e.txt' && ! grep -q to-err '$E2E_WORK/o.txt'"
guest_sum=$("$CLONE_BIN" exec -- sh -c 'head -c 10485760 /dev/urandom > /tmp/big; sha256sum /tmp/big' | cut -d' ' -f1) || true
t0=$(date +%s.%N)
host_sum=$("$CLONE_BIN" exec -- cat /tmp/big | sha256sum | cut -d' ' -f1) || true
echo "10 MiB of stdout in $(awk -v a="$t0" -v b="$(date +%s.%N)" "BEGIN{printf \"%.2f\", b-a}") s"
check "10 MiB of stdout arrive byte-exact" test -n "$guest_sum" -a "$guest_sum" = "$host_sum"
size=$("$CLONE_BIN" exec -- cat /tmp/big | wc -c) || true
check "10 MiB: size" test "$size" = 10485760

# exec -t under a terminal: a PTY with the terminal's window size.
tsock=/tmp/clone-e2e-agent-tmux.sock
tmux -S "$tsock" kill-server 2>/dev/null || true
tmux -S "$tsock" new-session -d -x 100 -y 30 "$CLONE_BIN exec -t -- sh; echo EXEC-T-STATUS=\$?; sleep 60"
sleep 3
tmux -S "$tsock" send-keys 'echo "tty=$(tty) size=$(stty size)"; exit 5' Enter
for _ in $(seq 1 30); do tmux -S "$tsock" capture-pane -p | grep -q EXEC-T-STATUS && break; sleep 1; done
pane=$(tmux -S "$tsock" capture-pane -p)
echo "$pane" | grep -E "tty=|EXEC-T" || true
check "exec -t: a pty in the guest" grep -q "tty=/dev/pts/" <<<"$pane"
check "exec -t: the terminal's window size" grep -q "size=30 100" <<<"$pane"
check "exec -t: exit status" grep -q "EXEC-T-STATUS=5" <<<"$pane"
tmux -S "$tsock" kill-server 2>/dev/null || true

# The control API with curl.
body=$(api a1 GET /vm)
check "GET /vm: 200 running" bash -c "[[ $(code) == 200 ]] && grep -q '\"state\":\"running\"' <<<'$body'"
check "GET /vm: agent connected" grep -q '"connected":true' <<<"$body"
api a1 PUT /vm/pause >/dev/null
check "PUT /vm/pause: 200" test "$(code)" = 200
body=$(api a1 GET /vm)
check "GET /vm: paused" grep -q '"state":"paused"' <<<"$body"
status=0; "$CLONE_BIN" exec --timeout 3 -- true 2>/dev/null || status=$?
check "a paused guest does not run commands" test "$status" != 0
api a1 PUT /vm/resume >/dev/null
check "PUT /vm/resume: 200" test "$(code)" = 200
body=$(api a1 POST /vm/exec -H 'Content-Type: application/json' -d '{"argv":["sh","-c","echo api-$((6*7)); exit 4"]}')
check "POST /vm/exec runs the command" bash -c "grep -q 'api-42' <<<'$body' && grep -q '\"exit_code\":4' <<<'$body'"
api a1 POST /vm/exec -H 'Content-Type: application/json' -d '{"argv":' >/dev/null
check "bad JSON -> 400" test "$(code)" = 400
body=$(api a1 POST /vm/exec -H 'Content-Type: application/json' -d '{"argv":["true"],"bogus":1}')
check "unknown field -> 400 naming it" bash -c "[[ $(code) == 400 ]] && grep -q bogus <<<'$body'"
api a1 DELETE /vm >/dev/null
check "wrong method -> 405" test "$(code)" = 405
head -c 3000000 /dev/zero | tr '\0' 'x' >"$E2E_WORK/huge.json"
api a1 POST /vm/exec -H 'Content-Type: application/json' --data-binary @"$E2E_WORK/huge.json" >/dev/null
check "huge body -> 413" test "$(code)" = 413
api a1 GET /nope >/dev/null
check "unknown path -> 404" test "$(code)" = 404
out=$("$CLONE_BIN" exec -- echo still-alive) || true
check "the VM still serves after bad requests" test "$out" = still-alive

# clone attach under tmux: the shell on ttyS0, Ctrl-Q detaches, the VM lives on.
tmux -S "$tsock" new-session -d -x 120 -y 30 "$CLONE_BIN attach --vm-id a1; echo ATTACH-STATUS=\$?; sleep 60"
sleep 2
tmux -S "$tsock" send-keys 'echo attached-$((6*7))' Enter
for _ in $(seq 1 30); do tmux -S "$tsock" capture-pane -p | grep -q attached-42 && break; sleep 1; done
check "attach: the guest shell answers" bash -c "tmux -S '$tsock' capture-pane -p | grep -q attached-42"
tmux -S "$tsock" send-keys C-q
for _ in $(seq 1 10); do tmux -S "$tsock" capture-pane -p | grep -q ATTACH-STATUS && break; sleep 1; done
pane=$(tmux -S "$tsock" capture-pane -p)
check "attach: Ctrl-Q detaches (status 0)" grep -q "ATTACH-STATUS=0" <<<"$pane"
tmux -S "$tsock" kill-server 2>/dev/null || true
out=$("$CLONE_BIN" exec -- echo after-detach) || true
check "attach: the VM keeps running after detach" test "$out" = after-detach

# A second VM without an agent: exec times out with a clear error; list/status see both.
id=$(run_vm b2 clone.noagent) || true
check "second VM started" test "$id" = b2
status=0; "$CLONE_BIN" exec -- true 2>"$E2E_WORK/ambiguous.err" || status=$?
check "two VMs: exec without --vm-id asks for one" bash -c "[[ $status == 1 ]] && grep -q 'pass --vm-id' '$E2E_WORK/ambiguous.err'"
t0=$(date +%s)
status=0; "$CLONE_BIN" exec --vm-id b2 -- true 2>"$E2E_WORK/noagent.err" || status=$?
t1=$(date +%s)
cat "$E2E_WORK/noagent.err"
check "no agent: exec fails with status 1" test "$status" = 1
check "no agent: says the agent is not reachable" grep -q "agent not reachable" "$E2E_WORK/noagent.err"
check "no agent: gives up within 20 s" test $((t1 - t0)) -le 20
"$CLONE_BIN" list --json >"$E2E_WORK/list.json"
check "list --json shows two VMs" test "$(grep -c '"id"' "$E2E_WORK/list.json")" = 2
"$CLONE_BIN" status >"$E2E_WORK/status.txt"
cat "$E2E_WORK/status.txt"
check "status reports memory" grep -q "2 VM(s)" "$E2E_WORK/status.txt"

# Shutdown through the agent and by force; both VM processes go away and clean up.
pid_a=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' "$CLONE_RUNTIME_DIR/vms/a1/info.json")
pid_b=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' "$CLONE_RUNTIME_DIR/vms/b2/info.json")
api a1 PUT /vm/shutdown >/dev/null
check "PUT /vm/shutdown (agent): 202" test "$(code)" = 202
api b2 PUT /vm/shutdown -H 'Content-Type: application/json' -d '{"mode":"force"}' >/dev/null
check "PUT /vm/shutdown force: 202" test "$(code)" = 202
for _ in $(seq 1 60); do kill -0 "$pid_a" 2>/dev/null || kill -0 "$pid_b" 2>/dev/null || break; sleep 0.5; done
check "both VM processes exited" bash -c "! kill -0 $pid_a 2>/dev/null && ! kill -0 $pid_b 2>/dev/null"
check "runtime directories removed" test -z "$(ls "$CLONE_RUNTIME_DIR/vms" 2>/dev/null)"
check "list is empty" test "$("$CLONE_BIN" list --json | tr -d ' \n')" = "[]"
e2e_finish
