# Sourced by scripts/setup.sh and scripts/install-kiosk.sh: apt package checks where
# a requirement may be met by alternatives, written "a|b|c" (libzbar0 became
# libzbar0t64 in Debian trixie). Needs dpkg-query and apt-cache.
# shellcheck shell=bash

pkg_installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
    [[ $status == *" ok installed" ]]
}

# True if any alternative of "a|b|c" is installed.
item_installed() {
    local alt
    local -a alts
    IFS='|' read -ra alts <<<"$1"
    for alt in "${alts[@]}"; do
        pkg_installed "$alt" && return 0
    done
    return 1
}

has_candidate() {
    local cand
    cand=$(apt-cache policy -- "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
    [[ -n $cand && $cand != "(none)" ]]
}

# The alternative of "a|b|c" to install (call after apt-get update).
item_pick() {
    local alt
    local -a alts
    IFS='|' read -ra alts <<<"$1"
    for alt in "${alts[@]}"; do
        if has_candidate "$alt"; then
            printf '%s' "$alt"
            return 0
        fi
    done
    printf '%s' "${alts[0]}"  # let apt report the error
}

# Run an apt-get command line ("$@", e.g. `as_root env ... apt-get -o DPkg::Lock::Timeout=10
# update`) and, while another package manager holds apt's or dpkg's lock (unattended-upgrades
# just after boot, a desktop updater), wait for it instead of failing: apt waits for the
# dpkg lock itself (DPkg::Lock::Timeout), but `apt-get update` does not wait for the
# package lists' lock (apt 2.6), so a lock failure is tried again every few seconds, with
# a line saying who holds it. APT_LOCK_WAIT: seconds to wait in all (default 900).
apt_wait() {
    local wait=${APT_LOCK_WAIT:-900} start=$SECONDS said=-1 rc errors holder
    errors=$(mktemp) || return 1
    while :; do
        rc=0
        "$@" 2>"$errors" || rc=$?
        # "are you root?": a lock file this user may not open, which no waiting mends
        if [[ $rc == 0 ]] || grep -q 'are you root' "$errors" ||
            ! grep -qE 'Could not get lock|Unable to acquire the dpkg frontend lock|Unable to lock' "$errors"; then
            cat "$errors" >&2
            rm -f "$errors"
            return "$rc"
        fi
        # said before the time check: one slow apt run (its own 1 s lock timeout on a busy
        # machine) may use up a short wait, and the user must still learn why it failed
        if (( said < 0 || SECONDS - said >= 60 )); then
            holder=$(grep -m1 -oE 'held by process [0-9]+( \([^)]*\))?' "$errors" || true)
            printf '[apt] another package manager is running (the apt/dpkg lock is %s); waiting for it to finish: %d s so far, at most %d s (APT_LOCK_WAIT)\n' \
                "${holder:-held}" $((SECONDS - start)) "$wait" >&2
            said=$SECONDS
        fi
        if (( SECONDS - start >= wait )); then
            printf '[apt] the lock is still held after %d s (APT_LOCK_WAIT): giving up\n' \
                $((SECONDS - start)) >&2
            cat "$errors" >&2
            rm -f "$errors"
            return "$rc"
        fi
        sleep "${APT_LOCK_RETRY:-5}"
    done
}
