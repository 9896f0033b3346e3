#!/bin/bash
# Bring up a single-node Slurm (slurmctld + slurmd, munge, no slurmdbd) for development and
# CI (Debian 12, as root, no systemd). Idempotent: installs what is missing, (re)writes the
# configuration, starts only the daemons that are not running (a changed configuration is
# applied with `scontrol reconfigure`, or by restarting daemons we started when a
# reconfigure cannot apply it), runs a smoke job and writes $RUN_DIR/env.sh.
# Daemons started here get a PID file in $RUN_DIR (see slurm-down.sh).
#
# What this configuration gives the runner (galaxy_tasks/runners/slurm.py):
# - fast scheduling: batch_sched_delay=0,sched_min_interval=0 (~0.1 s to start, not 3 s);
# - a permanent record of ended jobs: jobcomp/filetxt in $JOBCOMP (sacct needs slurmdbd);
# - ended jobs stay visible to squeue/scontrol for MinJobAge seconds;
# - GT_SLURM_CPUS CPUs (default 8: more than the host has oversubscribes, on purpose, so
#   several jobs run at once) and the host's memory, consumable (CR_Core_Memory), so --mem
#   is accepted and scheduled; DefMemPerCPU keeps a job without --mem from taking it all;
# - memory limits enforced (GT_SLURM_MEMORY_ENFORCEMENT):
#     cgroup  - task/cgroup + proctrack/cgroup on cgroup v1 (ConstrainRAMSpace): the kernel
#               OOM-kills the job inside its cgroup and Slurm records OUT_OF_MEMORY;
#     poll    - jobacct_gather/linux + OverMemoryKill: slurmstepd samples RSS every
#               JobAcctGatherFrequency seconds and kills the job; Slurm records
#               OUT_OF_MEMORY as well (a job faster than the sampling escapes);
#     auto    - (default) cgroup if this kernel has a writable cgroup v1 memory+freezer
#               hierarchy, else poll;
# - walltime enforced by slurmctld (--time, minutes; checked about every 30 s), KillWait=5
#   (SIGTERM, then SIGKILL 5 s later).
# Knobs: GT_SLURM_CPUS (8), GT_SLURM_RUN_DIR (/tmp/galaxy-tasks-slurm),
#        GT_SLURM_MEMORY_ENFORCEMENT (auto|cgroup|poll), GT_SLURM_MIN_JOB_AGE (3600).
set -euo pipefail
RUN_DIR=${GT_SLURM_RUN_DIR:-/tmp/galaxy-tasks-slurm}
CPUS=${GT_SLURM_CPUS:-8}
MIN_JOB_AGE=${GT_SLURM_MIN_JOB_AGE:-3600}
ENFORCE=${GT_SLURM_MEMORY_ENFORCEMENT:-auto}
CONF_DIR=/etc/slurm
JOBCOMP=/var/log/slurm/jobcomp.log
H=$(hostname -s)
mkdir -p "$RUN_DIR"
log() { echo "[slurm-up $(date +%T)] $*"; }
savepid() { # daemon-pidfile our-pidfile: the daemon writes its pid after it forked
  for _ in $(seq 100); do [ -s "$1" ] && break; sleep 0.1; done
  [ -s "$1" ] || { log "no pid file $1"; exit 1; }
  cp "$1" "$RUN_DIR/$2"
}
running() { # our-pidfile process-name: is the daemon we started still that process?
  local f=$RUN_DIR/$1
  [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && grep -qx "$2" "/proc/$(cat "$f")/comm"
}
case "$ENFORCE" in auto|cgroup|poll) ;; *) echo "GT_SLURM_MEMORY_ENFORCEMENT must be auto, cgroup or poll, not '$ENFORCE'" >&2; exit 2 ;; esac
[[ "$CPUS" =~ ^[1-9][0-9]*$ ]] || { echo "GT_SLURM_CPUS must be a positive integer, not '$CPUS'" >&2; exit 2; }

# 1. Packages. policy-rc.d keeps the package scripts from starting daemons we would not
#    have PID files for; one that was already there is left as it was.
PKGS="slurmctld slurmd slurm-client munge"
if ! dpkg -s $PKGS >/dev/null 2>&1; then
  log "installing $PKGS"
  RM_POLICY=
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; RM_POLICY=1; }
  timeout 600 apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends slurm-wlm slurm-client munge >/dev/null
  [ -z "$RM_POLICY" ] || rm -f /usr/sbin/policy-rc.d
fi

# 2. munge (the postinst normally creates the key)
[ -s /etc/munge/munge.key ] || runuser -u munge -- /usr/sbin/mungekey --create
install -d -o munge -g munge -m 755 /run/munge
if ! pgrep -x munged >/dev/null; then
  log "starting munged"; rm -f /run/munge/munged.pid; timeout 30 runuser -u munge -- /usr/sbin/munged
  savepid /run/munge/munged.pid munged.pid
fi
timeout 10 munge -n | timeout 10 unmunge >/dev/null

# 3. Memory enforcement: can this kernel give slurmd cgroup v1 memory + freezer hierarchies?
cgroup_v1_usable() {
  local d
  [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = tmpfs ] || return 1
  for d in memory freezer; do
    [ -w /sys/fs/cgroup/$d ] || return 1
    mkdir -p /sys/fs/cgroup/$d/gt_probe.$$ 2>/dev/null || return 1
    rmdir /sys/fs/cgroup/$d/gt_probe.$$
  done
}
if [ "$ENFORCE" = auto ]; then
  if cgroup_v1_usable; then ENFORCE=cgroup; else ENFORCE=poll; fi
fi
if [ "$ENFORCE" = cgroup ]; then
  cgroup_v1_usable || { log "cgroup v1 memory/freezer hierarchies are not usable here: use GT_SLURM_MEMORY_ENFORCEMENT=poll"; exit 1; }
  TRACKING="ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/cgroup
JobAcctGatherFrequency=task=5"
else
  TRACKING="ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
# slurmstepd samples each job's RSS every second and kills a job over its --mem
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill"
fi

# 4. Configuration
install -d /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
cat >"$T/slurm.conf" <<EOF
# written by galaxy-tasks ops/slurm-up.sh (memory enforcement: $ENFORCE)
ClusterName=local
SlurmctldHost=$H
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$TRACKING
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
MpiDefault=none
ReturnToService=2
MinJobAge=$MIN_JOB_AGE
KillWait=5
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
NodeName=localhost NodeHostname=$H NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$T/cgroup.conf" <<EOF
# written by galaxy-tasks ops/slurm-up.sh
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=yes
AllowedSwapSpace=0
EOF
CHANGED=0 RESTART=0
if ! cmp -s "$T/slurm.conf" $CONF_DIR/slurm.conf; then
  # the tracking plugins cannot change under a running slurmd/slurmctld
  grep -q '^ProctrackType' $CONF_DIR/slurm.conf 2>/dev/null && \
    ! diff <(grep -E '^(ProctrackType|TaskPlugin|JobAcctGatherType|SelectType)' $CONF_DIR/slurm.conf) \
           <(grep -E '^(ProctrackType|TaskPlugin|JobAcctGatherType|SelectType)' "$T/slurm.conf") >/dev/null && RESTART=1
  install -m 644 "$T/slurm.conf" $CONF_DIR/slurm.conf; CHANGED=1
fi
if ! cmp -s "$T/cgroup.conf" $CONF_DIR/cgroup.conf; then install -m 644 "$T/cgroup.conf" $CONF_DIR/cgroup.conf; CHANGED=1; fi

# 5. Daemons
if [ $RESTART = 1 ]; then
  if running slurmd.pid slurmd && running slurmctld.pid slurmctld; then
    log "tracking plugins changed: restarting the daemons this script started"
    bash "$(dirname "$0")/slurm-down.sh" --keep-munge
  else
    log "tracking plugins changed, but the running daemons were not started here: restart them yourself"; exit 1
  fi
fi
if ! pgrep -x slurmctld >/dev/null; then
  log "starting slurmctld"; rm -f /run/slurmctld.pid; timeout 60 slurmctld; savepid /run/slurmctld.pid slurmctld.pid
elif [ $CHANGED = 1 ]; then
  log "configuration changed: scontrol reconfigure"; timeout 30 scontrol reconfigure
fi
if ! pgrep -x slurmd >/dev/null; then
  log "starting slurmd"; rm -f /run/slurmd.pid; timeout 60 slurmd -N localhost; savepid /run/slurmd.pid slurmd.pid
fi

# 6. Wait for the node; resume it if a previous run (or a test) left it down or drained.
for _ in $(seq 60); do
  st=$(timeout 10 sinfo -h -n localhost -o %T 2>/dev/null || true)
  case "$st" in
    idle*|mixed*|allocated*) break ;;
    down*|drain*|fail*) timeout 10 scontrol update NodeName=localhost State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.5
done

# 7. Smoke job (own polling: `sbatch --wait` polls only every ~10 s)
J=$(timeout 30 sbatch --parsable -o /dev/null -J gt-smoke --wrap true)
J=${J%%;*}
st=
for _ in $(seq 300); do  # up to ~60 s
  st=$(timeout 10 scontrol show job "$J" | grep -o 'JobState=[A-Z_]*' || true)
  case "$st" in
    JobState=COMPLETED) break ;;
    JobState=PENDING|JobState=RUNNING|JobState=CONFIGURING|JobState=COMPLETING|"") ;;
    *) log "smoke job $J: $st"; exit 1 ;;
  esac
  sleep 0.2
done
[ "$st" = JobState=COMPLETED ] || { log "smoke job $J did not complete ($st)"; exit 1; }
log "smoke job OK"

cat >"$RUN_DIR/env.sh" <<EOF
# written by galaxy-tasks ops/slurm-up.sh: what Slurm clients and the Slurm runner need
export SLURM_CONF=$CONF_DIR/slurm.conf
# the runner's permanent record of ended jobs (its jobcomp_file param)
export GT_SLURM_JOBCOMP=$JOBCOMP
export GT_SLURM_PARTITION=debug
export GT_SLURM_MEMORY_ENFORCEMENT=$ENFORCE
export PATH=\$PATH:/usr/bin
EOF
log "up (node localhost, $CPUS CPUs, ${MEM} MB, partition debug, memory enforcement: $ENFORCE); source $RUN_DIR/env.sh"
