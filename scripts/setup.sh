#!/usr/bin/env bash
# GreenGate set-up for a fresh Debian / Raspberry Pi OS machine.
#
# Idempotent: run it as often as you like. A run with nothing to do takes a
# second or two and installs nothing.
#
#   scripts/setup.sh                      # base system packages + .venv
#   scripts/setup.sh --with mqtt          # ... plus mosquitto + mosquitto-clients
#   scripts/setup.sh --with mqtt,postgres --with browser
#   GREENGATE_WITH="mqtt browser" scripts/setup.sh
#
# Options:
#   --with GROUP[,GROUP...]  add system package groups (repeatable; see
#                            PKG_GROUPS below). A package name from a group
#                            (e.g. "mosquitto") selects its whole group.
#   --no-system              skip the system-package step (GREENGATE_NO_SYSTEM=1)
#   --force                  reinstall the Python package even if pyproject.toml
#                            did not change (GREENGATE_FORCE=1)
#   -h, --help               show this help
#
# Environment: GREENGATE_WITH (space/comma separated groups), GREENGATE_NO_SYSTEM,
# GREENGATE_FORCE, PYTHON (interpreter used to create .venv; must be >= 3.11).
set -euo pipefail

# --- system package groups -------------------------------------------------
# One table to extend. "a|b" means: either package satisfies the requirement;
# if neither is installed, the first one apt knows about is installed.
declare -A PKG_GROUPS=(
    [mqtt]="mosquitto mosquitto-clients"
    [postgres]="postgresql"
    [browser]="chromium|chromium-browser"
    [lint]="shellcheck"
)
# Always installed (libzbar0 became libzbar0t64 in Debian trixie; DejaVu Sans prints the cards).
BASE_PACKAGES=("libzbar0|libzbar0t64" fonts-dejavu-core)

MIN_PY=(3 11)
VENV=.venv
STAMP="$VENV/.greengate-installed"

# --- helpers -----------------------------------------------------------------
log() { printf '[setup] %s\n' "$*"; }
warn() { printf '[setup] WARNING: %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    printf 'Known groups:\n'
    local g
    for g in $(printf '%s\n' "${!PKG_GROUPS[@]}" | sort); do
        printf '  %-10s %s\n' "$g" "${PKG_GROUPS[$g]}"
    done
}

# Resolve a group name (or a package name belonging to a group) to its key.
resolve_group() {
    local want=$1 g item alt
    local -a alts
    if [[ -n ${PKG_GROUPS[$want]+x} ]]; then
        printf '%s' "$want"
        return 0
    fi
    for g in "${!PKG_GROUPS[@]}"; do
        for item in ${PKG_GROUPS[$g]}; do
            IFS='|' read -ra alts <<<"$item"
            for alt in "${alts[@]}"; do
                if [[ $alt == "$want" ]]; then
                    printf '%s' "$g"
                    return 0
                fi
            done
        done
    done
    return 1
}

# Run a command as root: directly when root, else through sudo (non-interactive
# when there is no terminal, e.g. in CI).
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [[ -t 0 ]]; then sudo "$@"; else sudo -n "$@"; fi
    else
        die "root privileges needed for: $* (run as root or install sudo)"
    fi
}

# pkg_installed, item_installed, has_candidate, item_pick
# shellcheck source=scripts/apt-alternatives.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-alternatives.sh"

# The postgres group is for the tests, which run their own throw-away clusters
# (tests/databases.py). Keep Debian's postgresql package from creating (and starting)
# a system-wide "main" cluster on port 5432 when it is first installed.
PG_NO_MAIN_CLUSTER=/etc/postgresql-common/createcluster.d/greengate-no-main-cluster.conf
pg_no_main_cluster() {
    [[ -e $PG_NO_MAIN_CLUSTER ]] && return 0
    log "postgresql: no system-wide main cluster ($PG_NO_MAIN_CLUSTER says so; delete it" \
        "to get Debian's default back)"
    as_root mkdir -p "$(dirname "$PG_NO_MAIN_CLUSTER")"
    printf '%s\n' "# written by GreenGate scripts/setup.sh: tests run their own PostgreSQL clusters" \
        "create_main_cluster = false" | as_root tee "$PG_NO_MAIN_CLUSTER" >/dev/null
}



py_ok() {  # $1: interpreter; true if it runs and is >= MIN_PY
    "$1" -c "import sys; sys.exit(sys.version_info < (${MIN_PY[0]}, ${MIN_PY[1]}))" >/dev/null 2>&1
}

py_version() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "?"
}

# Echo the interpreter to create .venv with (real path, not a pyenv shim),
# or nothing if none is >= MIN_PY.
find_python() {
    local c
    local -a candidates=(python3 python3.13 python3.12 python3.11)
    [[ -n ${PYTHON:-} ]] && candidates=("$PYTHON")
    for c in "${candidates[@]}"; do
        if command -v "$c" >/dev/null 2>&1 && py_ok "$c"; then
            "$c" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
}

python_too_old_msg() {
    local found=${PYTHON:-python3} v="not found"
    command -v "$found" >/dev/null 2>&1 && v=$(py_version "$found")
    printf 'Python >= %d.%d is required (%s: %s). Install python3.11 or newer (Debian / Raspberry Pi OS bookworm ship 3.11) or point PYTHON= at one.' \
        "${MIN_PY[0]}" "${MIN_PY[1]}" "$found" "$v"
}

venv_usable() {  # the existing .venv works and is new enough
    [[ -x $VENV/bin/python ]] && py_ok "$VENV/bin/python" &&
        "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1
}

can_make_venv() {  # $1: interpreter
    "$1" -m venv --help >/dev/null 2>&1 && "$1" -c 'import ensurepip' >/dev/null 2>&1
}

# Debian package providing venv/ensurepip for interpreter $1.
venv_package() {
    local v; v=$(py_version "$1")
    if [[ -x /usr/bin/python3 && $(py_version /usr/bin/python3) == "$v" ]]; then
        printf 'python3-venv'
    else
        printf 'python%s-venv' "$v"
    fi
}

file_sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | awk '{print $1}'
    else
        "$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
    fi
}

# --- arguments -----------------------------------------------------------------
with_raw="${GREENGATE_WITH:-}"
no_system="${GREENGATE_NO_SYSTEM:-0}"
force="${GREENGATE_FORCE:-0}"
while [[ $# -gt 0 ]]; do
    case $1 in
        --with) [[ $# -ge 2 ]] || die "--with needs a group name"; with_raw+=" $2"; shift 2 ;;
        --with=*) with_raw+=" ${1#--with=}"; shift ;;
        --no-system) no_system=1; shift ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -f pyproject.toml ]] || die "pyproject.toml not found in $(pwd)"

wanted=("${BASE_PACKAGES[@]}")
declare -A seen_groups=()
for name in ${with_raw//,/ }; do
    group=$(resolve_group "$name") ||
        die "unknown package group '$name' (known: $(printf '%s\n' "${!PKG_GROUPS[@]}" | sort | xargs))"
    [[ -n ${seen_groups[$group]+x} ]] && continue
    seen_groups[$group]=1
    read -ra items <<<"${PKG_GROUPS[$group]}"
    wanted+=("${items[@]}")
done

# --- Python interpreter (decides whether a venv package is needed) -------------
need_venv=0
venv_usable || need_venv=1
python=""
if [[ $need_venv == 1 ]]; then
    python=$(find_python)
    if [[ -z $python ]]; then
        if [[ -z ${PYTHON:-} ]] && ! command -v python3 >/dev/null 2>&1; then
            wanted+=(python3 python3-venv)   # bare system: get the distro Python
        else
            die "$(python_too_old_msg)"
        fi
    elif ! can_make_venv "$python"; then
        wanted+=("$(venv_package "$python")")
    fi
fi

# --- system packages -----------------------------------------------------------
if [[ $no_system == 1 ]]; then
    log "skipping system packages (--no-system)"
elif ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    warn "not a Debian-based system; make sure these are installed: ${wanted[*]}"
else
    missing=()
    for item in "${wanted[@]}"; do
        item_installed "$item" || missing+=("$item")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "system packages OK (${wanted[*]})"
    else
        log "installing system packages: ${missing[*]}"
        # apt_wait (apt-alternatives.sh): another apt holding the lock is waited for
        apt_wait as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get -o DPkg::Lock::Timeout=10 update -q
        to_install=()
        for item in "${missing[@]}"; do
            to_install+=("$(item_pick "$item")")
            if [[ $item == postgresql ]]; then pg_no_main_cluster; fi
        done
        apt_wait as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get -o DPkg::Lock::Timeout=10 install -y -q --no-install-recommends "${to_install[@]}"
    fi
fi

# --- Mosquitto new enough for bridges ------------------------------------------
# Debian 12's Mosquitto 2.0.11 spins at 100% CPU, serving nobody, once a bridge that
# reconnected loses its link again (measured: tests/test_tiers_*.py, docs/scaling.md);
# 2.0.21 does not. District brokers bridge to the core, and the tests cut bridges, so
# the mqtt group takes Mosquitto from bookworm-backports on Debian 12.
MOSQUITTO_MIN=2.0.21
mosquitto_new_enough() {
    local v
    v=$(dpkg-query -W -f='${Version}' mosquitto 2>/dev/null) || return 1
    dpkg --compare-versions "$v" ge "$MOSQUITTO_MIN"
}
if [[ -n ${seen_groups[mqtt]+x} && $no_system != 1 ]] && command -v apt-get >/dev/null 2>&1 &&
        ! mosquitto_new_enough; then
    # shellcheck source=/dev/null
    codename=$(. /etc/os-release 2>/dev/null; printf '%s' "${VERSION_CODENAME:-}")
    if [[ $codename == bookworm ]]; then
        backports=/etc/apt/sources.list.d/greengate-bookworm-backports.list
        if [[ ! -e $backports ]]; then
            log "adding bookworm-backports ($backports) for Mosquitto >= $MOSQUITTO_MIN"
            printf '%s\n' "deb http://deb.debian.org/debian bookworm-backports main" |
                as_root tee "$backports" >/dev/null
        fi
        apt_wait as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get -o DPkg::Lock::Timeout=10 update -q
        log "installing Mosquitto from bookworm-backports"
        apt_wait as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get -o DPkg::Lock::Timeout=10 install -y -q --no-install-recommends \
            -t bookworm-backports mosquitto mosquitto-clients
    else
        warn "Mosquitto $(dpkg-query -W -f='${Version}' mosquitto 2>/dev/null || echo '?') is" \
            "older than $MOSQUITTO_MIN: its bridges can hang (docs/scaling.md); install a newer one"
    fi
fi

# --- virtualenv ------------------------------------------------------------------
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [[ $need_venv == 1 ]]; then
    [[ -n $python ]] || python=$(find_python)
    [[ -n $python ]] || die "$(python_too_old_msg)"
    can_make_venv "$python" ||
        die "$python cannot create virtualenvs (install $(venv_package "$python"), or drop --no-system)"
    if [[ -e $VENV ]]; then
        log "existing $VENV is unusable; recreating it with $python ($(py_version "$python"))"
        "$python" -m venv --clear "$VENV"
    else
        log "creating $VENV with $python ($(py_version "$python"))"
        "$python" -m venv "$VENV"
    fi
    log "upgrading pip"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip ||
        warn "could not upgrade pip; continuing with $("$VENV/bin/python" -m pip --version | awk '{print $2}')"
else
    log "$VENV OK (Python $(py_version "$VENV/bin/python"))"
fi

# --- project install (only when pyproject.toml changed) ------------------------
want_stamp=$(file_sha256 pyproject.toml)
have_stamp=$(cat "$STAMP" 2>/dev/null || true)
if [[ $force != 1 && $want_stamp == "$have_stamp" ]]; then
    log "greengate already installed (pyproject.toml unchanged)"
else
    if [[ $need_venv == 0 ]]; then
        log "upgrading pip"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip || warn "could not upgrade pip; continuing"
    fi
    log "installing greengate: pip install -e '.[test]'"
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install --quiet -e '.[test]'
    printf '%s\n' "$want_stamp" >"$STAMP"
    log "installed"
fi
# zxing-cpp (a main dependency) is the kiosk's decoder; pyzbar is only its fallback.
if ! "$VENV/bin/python" -c 'import zxingcpp' >/dev/null 2>&1; then
    warn "zxing-cpp does not import: decoder 'auto' falls back to pyzbar (slower, reads fewer codes);" \
        "run: $VENV/bin/python -m pip install zxing-cpp"
fi
log "done"
