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
