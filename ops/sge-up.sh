#!/bin/bash
# Bring up a single-host Son of Grid Engine cell with DRMAA for development and CI
# (Debian 12, as root, no systemd). Idempotent: installs what is missing, starts only the
# daemons that are not running, re-applies the cell configuration, runs a smoke job and
# writes $RUN_DIR/env.sh. Daemons started here get a PID file in $RUN_DIR (see sge-down.sh).
# Knobs: SGE_SLOTS (default 4), GT_SGE_RUN_DIR (default /tmp/galaxy-tasks-sge).
set -euo pipefail
RUN_DIR=${GT_SGE_RUN_DIR:-/tmp/galaxy-tasks-sge}
SLOTS=${SGE_SLOTS:-4}
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
H=$(hostname)
COMMON=$SGE_ROOT/$SGE_CELL/common
SPOOL=/var/spool/gridengine
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
mkdir -p "$RUN_DIR"
log() { echo "[sge-up $(date +%T)] $*"; }

# 1. Packages. The debconf answers make the postinst create the cell; policy-rc.d keeps
#    the package scripts from starting daemons we would not have PID files for.
PKGS="gridengine-master gridengine-exec gridengine-client gridengine-drmaa1.0"
if ! dpkg -s $PKGS >/dev/null 2>&1; then
  log "installing $PKGS"
  for p in gridengine-common gridengine-client gridengine-master gridengine-exec; do
    printf '%s shared/gridengineconfig boolean true\n%s shared/gridenginecell string default\n%s shared/gridenginemaster string %s\n' \
      $p $p $p "$H"
  done | debconf-set-selections
  RM_POLICY=
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; RM_POLICY=1; }
  timeout 600 apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends $PKGS >/dev/null
  [ -z "$RM_POLICY" ] || rm -f /usr/sbin/policy-rc.d
fi
if [ ! -e $SPOOL/spooldb/sge ]; then  # the postinst skipped the cell: create it
  install -d -o sgeadmin -g sgeadmin $COMMON $SPOOL/{qmaster,qmaster/job_scripts,spooldb,execd}
  install -m644 -o sgeadmin -g sgeadmin /usr/share/gridengine/default-bootstrap $COMMON/bootstrap
  su -s /bin/sh -c "/usr/share/gridengine/scripts/init_cluster $SGE_ROOT $SGE_CELL $SPOOL/spooldb sgeadmin" sgeadmin
fi

# 2. qmaster rejects clients whose address reverse-resolves to another name; when the host
#    name resolves to loopback ("localhost"), alias localhost to it.
getent hosts "$H" >/dev/null || echo "127.0.0.1 $H" >>/etc/hosts
case "$(getent hosts "$H" | awk '{print $1; exit}')" in
  127.*|::1) echo "$H localhost" >$COMMON/host_aliases ;;
esac
echo "$H" >$COMMON/act_qmaster

# 3. qmaster
if ! pgrep -x sge_qmaster >/dev/null; then
  log "starting sge_qmaster"; rm -f $SPOOL/qmaster/qmaster.pid; timeout 60 /usr/sbin/sge_qmaster
  for _ in $(seq 60); do timeout 10 qconf -sh >/dev/null 2>&1 && break; sleep 1; done
  cp $SPOOL/qmaster/qmaster.pid "$RUN_DIR/qmaster.pid"
fi
timeout 10 qconf -sh >/dev/null || { log "qmaster not reachable"; exit 1; }

# 4. Configuration, re-applied on every run.
q() { timeout 30 qconf "$@" 2>&1 | grep -v -e 'already exists' -e 'modified' -e 'changed' -e 'added' || true; }
q -ah "$H" ; q -as "$H"
# Global: allow root (min_uid 1000 by default) and flush accounting each second, so qacct
# knows about a job ~1 s after it ended (recovery of jobs that ended while detached).
timeout 10 qconf -sconf global | sed -e ':a;/\\$/{N;s/\\\n//;ba}' | sed -e '/^#/d' \
  -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' \
  -e 's/^reporting_params .*/reporting_params accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00/' \
  >$T/global
q -Mconf $T/global
# Scheduler: the default 15 s interval costs 15 s per job; run every second and right
# after each submit/finish instead.
timeout 10 qconf -ssconf | sed -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
  -e 's/^flush_submit_sec .*/flush_submit_sec 1/' -e 's/^flush_finish_sec .*/flush_finish_sec 1/' \
  -e 's/^job_load_adjustments .*/job_load_adjustments NONE/' \
  -e 's/^load_adjustment_decay_time .*/load_adjustment_decay_time 0:0:0/' \
  -e 's/^schedd_job_info .*/schedd_job_info false/' >$T/sconf
q -Msconf $T/sconf
printf 'group_name @allhosts\nhostlist %s\n' "$H" >$T/hg
if timeout 10 qconf -shgrp @allhosts >/dev/null 2>&1; then q -Mhgrp $T/hg; else q -Ahgrp $T/hg; fi
printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' "$H" >$T/eh
q -Ae $T/eh
# A shared-memory parallel environment, so `cores` can be requested as `-pe smp N`.
printf 'pe_name smp\nslots 9999\nuser_lists NONE\nxuser_lists NONE\nstart_proc_args NONE\nstop_proc_args NONE\nallocation_rule $pe_slots\ncontrol_slaves FALSE\njob_is_first_task TRUE\nurgency_slots min\naccounting_summary FALSE\nqsort_args NONE\n' >$T/pe
if timeout 10 qconf -sp smp >/dev/null 2>&1; then q -Mp $T/pe; else q -Ap $T/pe; fi
timeout 10 qconf -sq | sed -e 's/^qname .*/qname all.q/' -e 's/^hostlist .*/hostlist @allhosts/' \
  -e "s/^slots .*/slots $SLOTS/" -e 's/^pe_list .*/pe_list smp/' -e 's/^load_thresholds .*/load_thresholds NONE/' \
  -e 's|^shell .*|shell /bin/sh|' >$T/all.q
if timeout 10 qconf -sq all.q >/dev/null 2>&1; then q -Mq $T/all.q; else q -Aq $T/all.q; fi

# 5. execd
if ! pgrep -x sge_execd >/dev/null; then
  log "starting sge_execd"; rm -f $SPOOL/execd/*/execd.pid; timeout 60 /usr/sbin/sge_execd
  for _ in $(seq 30); do ls $SPOOL/execd/*/execd.pid >/dev/null 2>&1 && break; sleep 1; done
  cp "$(ls $SPOOL/execd/*/execd.pid | head -1)" "$RUN_DIR/execd.pid"
fi

# 6. Smoke job: waits until the execd has registered and the scheduler dispatches.
for _ in $(seq 30); do timeout 10 qstat -f -q "all.q@$H" 2>/dev/null | grep -q "all.q@$H .* lx-" && break; sleep 1; done
timeout 120 qsub -b y -sync y -o /dev/null -j y /bin/true >/dev/null || { log "smoke job failed"; exit 1; }

cat >"$RUN_DIR/env.sh" <<EOF
export SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL
export DRMAA_LIBRARY_PATH=/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0
# libdrmaa pulls in libjemalloc (initial-exec TLS): Python's dlopen() of it fails without
# this, and it must be set before the interpreter starts.
export GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096
export PATH=\$PATH:/usr/bin
EOF
log "up ($SLOTS slots); source $RUN_DIR/env.sh"
