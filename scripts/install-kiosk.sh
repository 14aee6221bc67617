#!/usr/bin/env bash
# Install a GreenGate checkpoint kiosk on Raspberry Pi OS (Debian bookworm).
#
# Run as root from a checkout of this repository (normally /opt/greengate).
# Idempotent: a second run with the same arguments changes nothing.
#
#   sudo bash /opt/greengate/scripts/install-kiosk.sh                 # bundle from the boot partition
#   sudo bash /opt/greengate/scripts/install-kiosk.sh --bundle hcm-q7-0001.tar
#   sudo bash /opt/greengate/scripts/install-kiosk.sh --fleet https://fleet.example:8443 --token TOKEN
#
# Steps: system packages (apt), user 'greengate' and its groups, the venv
# /opt/greengate/.venv (--system-site-packages, pip install of the checkout
# with the zxing extra), the enrolment into /etc/greengate/, the unit
# greengate-kiosk.service (enabled and started once a config is in place).
#
# Enrolment (one of them; without any, the folder greengate/ on the boot
# partition is used: /boot/firmware/greengate, then /boot/greengate):
#   --bundle FILE        enrolment bundle <kiosk-id>.tar (gzip-compressed or not)
#   --boot DIR           enrolment folder (the greengate/ folder itself, or the
#                        partition holding it); its files are deleted from it
#                        once installed and checked
#   --fleet URL --token TOKEN
#                        enrol online with a one-time token: runs
#                        greengate-kiosk enrol (the key is made on this Pi)
#   --no-enrol           install the software only
#   --force              replace an existing, different /etc/greengate/kiosk.toml
#
# For tests and image building:
#   --root DIR           install into DIR instead of / (DIR/etc/greengate, ...)
#   --no-apt             skip the system packages
#   --no-user            do not create the user or change its groups
#   --no-venv            skip the venv and the pip install
#   --no-systemctl       copy the unit but do not run systemctl
#   -h, --help           show this help
#
# Environment: GREENGATE_KIOSK_BIN (the greengate-kiosk used for --token;
# default: the venv's), PYTHON (interpreter for the venv, default
# /usr/bin/python3, whose apt packages the venv sees).
set -euo pipefail

# --- constants -------------------------------------------------------------------
KIOSK_USER=greengate
KIOSK_GROUPS=(gpio video dialout)
UNIT_NAME=greengate-kiosk.service
# The enrolment bundle's files (contract with `greengate-provision enrol` and
# `greengate-kiosk enrol`): the config first, then what it points at.
BUNDLE_FILES=(kiosk.toml kiosk.key kiosk.pem ca.pem fleet-bundle.pem)
MAX_FILE_BYTES=1048576
# "a|b" means: either package satisfies the requirement; if neither is
# installed, the first one apt knows about is installed (as scripts/setup.sh).
APT_REQUIRED=(python3 python3-venv "libzbar0|libzbar0t64"
              "systemd-timesyncd|chrony|ntpsec|ntp|openntpd")
# From the Raspberry Pi apt repository; absent on plain Debian.
APT_OPTIONAL=(python3-picamera2)
MIN_PY=(3 11)

# --- helpers ---------------------------------------------------------------------
log() { printf '[install-kiosk] %s\n' "$*"; }
warn() { printf '[install-kiosk] WARNING: %s\n' "$*" >&2; }
die() { printf '[install-kiosk] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# pkg_installed, item_installed, has_candidate, item_pick
# shellcheck source=scripts/apt-alternatives.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-alternatives.sh"

# The gid of a group in the target system ($ROOT/etc/group), or nothing.
group_gid() {
    local line=""
    if [[ $ROOT == / ]]; then
        line=$(getent group "$1") || line=""
    elif [[ -f $ROOT/etc/group ]]; then
        line=$(awk -F: -v g="$1" '$1 == g {print; exit}' "$ROOT/etc/group")
    fi
    [[ -z $line ]] || cut -d: -f3 <<<"$line"
}

user_exists() {
    if [[ $ROOT == / ]]; then
        getent passwd "$1" >/dev/null
    else
        [[ -f $ROOT/etc/passwd ]] && awk -F: -v u="$1" '$1 == u {f=1} END {exit !f}' "$ROOT/etc/passwd"
    fi
}

# True if user $1 is listed as a member of group $2 (supplementary membership).
in_group() {
    local line
    if [[ $ROOT == / ]]; then line=$(getent group "$2" || true)
    else line=$(awk -F: -v g="$2" '$1 == g' "$ROOT/etc/group" 2>/dev/null || true); fi
    [[ ,${line##*:}, == *",$1,"* ]]
}

# Python helper: check a staged enrolment folder (files, TOML, id) and print the id.
check_enrolment() {  # $1: folder
    python3 - "$1" "$MAX_FILE_BYTES" "${BUNDLE_FILES[@]}" <<'PY'
import os, stat, sys, tomllib
folder, limit, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
problems = []
for name in names:
    path = os.path.join(folder, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        problems.append(f"{name} is missing")
        continue
    if not stat.S_ISREG(st.st_mode):
        problems.append(f"{name} is not a regular file")
    elif st.st_size == 0:
        problems.append(f"{name} is empty")
    elif st.st_size > limit:
        problems.append(f"{name} is larger than {limit} bytes")
if problems:
    sys.exit("; ".join(problems))
try:
    with open(os.path.join(folder, "kiosk.toml"), "rb") as f:
        cfg = tomllib.load(f)
except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
    sys.exit(f"kiosk.toml is not valid TOML: {exc}")
kiosk_id = cfg.get("kiosk", {}).get("id") if isinstance(cfg.get("kiosk"), dict) else None
if not isinstance(kiosk_id, str) or not kiosk_id.strip():
    sys.exit("kiosk.toml names no kiosk: [kiosk] id is missing or empty")
# The files the config points at must be the ones in the bundle.
for section, key in (("mqtt", "ca"), ("mqtt", "cert"), ("mqtt", "key"), ("bundles", "fleet_key")):
    value = cfg.get(section, {}).get(key) if isinstance(cfg.get(section), dict) else None
    if isinstance(value, str) and value and not os.path.isabs(value) and value not in names:
        problems.append(f"[{section}] {key} = {value!r} is not a file of the bundle")
if problems:
    sys.exit("; ".join(problems))
print(kiosk_id)
PY
}

# Python helper: check the tar's members and extract the bundle's files into $2.
extract_bundle() {  # $1: tar file (plain or compressed), $2: empty folder
    python3 - "$1" "$2" "$MAX_FILE_BYTES" "${BUNDLE_FILES[@]}" <<'PY'
import os, sys, tarfile
tar_path, dest, limit, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
wanted = {f"greengate/{n}": n for n in names}
try:
    tar = tarfile.open(tar_path, "r:*")  # detects gzip (and bzip2/xz) itself
except (tarfile.TarError, OSError) as exc:
    sys.exit(f"{tar_path} is not a tar file (plain or gzip)")
problems, found = [], {}
with tar:
    try:
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        sys.exit(f"{tar_path} is damaged: {exc}")
    for m in members:
        name = m.name[2:] if m.name.startswith("./") else m.name
        name = name.rstrip("/") if m.isdir() else name
        if name.startswith("/") or ".." in name.split("/"):
            problems.append(f"unsafe member {m.name!r}")
        elif name == "greengate" and m.isdir():
            continue
        elif name not in wanted:
            problems.append(f"unexpected member {m.name!r}")
        elif not m.isreg():
            problems.append(f"member {m.name!r} is not a regular file (link or device)")
        elif name in found:
            problems.append(f"member {m.name!r} appears twice")
        elif m.size > limit:
            problems.append(f"member {m.name!r} is larger than {limit} bytes")
        else:
            found[name] = m
    for name in wanted:
        if name not in found:
            problems.append(f"{name} is missing")
    if problems:
        sys.exit("; ".join(problems))
    for name, m in found.items():
        data = tar.extractfile(m).read()
        fd = os.open(os.path.join(dest, wanted[name]), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
PY
}

same_files() {  # $1, $2: folders; the bundle's files are identical in both
    local f
    for f in "${BUNDLE_FILES[@]}"; do
        [[ -f $1/$f && -f $2/$f ]] && cmp -s "$1/$f" "$2/$f" || return 1
    done
}

toml_id() {  # the [kiosk] id of a config, or "?"
    python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["kiosk"]["id"])' \
        "$1" 2>/dev/null || echo "?"
}

# What the venv's install is made of: the interpreter and every file of the
# packages, so a changed checkout (git pull) is installed again and an
# unchanged one is not.
source_stamp() {
    (
        set +o pipefail
        cd "$CHECKOUT"
        {
            "$VENV/bin/python" -V 2>&1
            find pyproject.toml greengate device fleet provisioning -type f \
                ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 2>/dev/null |
                LC_ALL=C sort -z | xargs -0 -r sha256sum
        } | sha256sum | awk '{print $1}'
    )
}

# --- arguments ---------------------------------------------------------------------
ROOT=/
bundle="" boot="" fleet="" token=""
force=0 no_enrol=0 no_apt=0 no_user=0 no_venv=0 no_systemctl=0
need_arg() { [[ $2 -ge 2 && -n ${3:-} ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --bundle) need_arg "$1" $# "${2:-}"; bundle=$2; shift 2 ;;
        --boot) need_arg "$1" $# "${2:-}"; boot=$2; shift 2 ;;
        --fleet) need_arg "$1" $# "${2:-}"; fleet=$2; shift 2 ;;
        --token) need_arg "$1" $# "${2:-}"; token=$2; shift 2 ;;
        --root) need_arg "$1" $# "${2:-}"; ROOT=$2; shift 2 ;;
        --bundle=*|--boot=*|--fleet=*|--token=*|--root=*)
            set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
        --force) force=1; shift ;;
        --no-enrol) no_enrol=1; shift ;;
        --no-apt) no_apt=1; shift ;;
        --no-user) no_user=1; shift ;;
        --no-venv) no_venv=1; shift ;;
        --no-systemctl) no_systemctl=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

sources=0
[[ -n $bundle ]] && sources=$((sources + 1))
[[ -n $boot ]] && sources=$((sources + 1))
[[ -n $fleet || -n $token ]] && sources=$((sources + 1))
[[ $no_enrol == 1 ]] && sources=$((sources + 1))
[[ $sources -le 1 ]] || die "give only one of --bundle, --boot, --fleet/--token and --no-enrol"
if [[ -n $fleet || -n $token ]]; then
    [[ -n $fleet && -n $token ]] || die "--fleet and --token go together: --fleet https://FLEET:8443 --token TOKEN"
    [[ $fleet == https://* ]] || die "--fleet must be an https:// URL (the token and the certificate travel over it): got $fleet"
fi

[[ -d $ROOT ]] || die "--root $ROOT: no such directory"
ROOT=$(cd "$ROOT" && pwd -P)
R=${ROOT%/}  # prefix for paths: "" for /
ETC=$R/etc/greengate
CONFIG=$ETC/kiosk.toml
UNIT_DIR=$R/etc/systemd/system
VENV=$R/opt/greengate/.venv
STAMP=$VENV/.greengate-kiosk-installed
KIOSK_BIN=${GREENGATE_KIOSK_BIN:-$VENV/bin/greengate-kiosk}

is_root=0
[[ $(id -u) -eq 0 ]] && is_root=1
if [[ $is_root == 0 && $ROOT == / ]]; then
    die "run as root: sudo bash $0 ... (or use --root DIR to install into a folder)"
fi

CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
[[ -f $CHECKOUT/pyproject.toml && -f $CHECKOUT/systemd/$UNIT_NAME ]] ||
    die "$CHECKOUT is not a GreenGate checkout (no pyproject.toml or systemd/$UNIT_NAME); run the script from the repository"
log "checkout $CHECKOUT, installing into $ROOT"
if [[ $ROOT == / && $CHECKOUT != /opt/greengate ]]; then
    warn "the checkout is at $CHECKOUT, not /opt/greengate; the package is installed into /opt/greengate/.venv, but the unit's documentation links point at /opt/greengate"
fi

command -v python3 >/dev/null 2>&1 ||
    die "python3 is missing: apt-get install python3 (Raspberry Pi OS ships it)"
python3 -c "import sys; sys.exit(sys.version_info < (${MIN_PY[0]}, ${MIN_PY[1]}))" ||
    die "python3 >= ${MIN_PY[0]}.${MIN_PY[1]} is needed (Raspberry Pi OS bookworm has 3.11); this is $(python3 -V 2>&1)"

# Files are created readable (venv, unit); secrets get explicit modes below.
umask 022

# --- enrolment source: checked before anything is installed --------------------------
STAGE="" SRC_COPY=""
cleanup() {
    [[ -n $STAGE && -d $STAGE ]] && rm -rf -- "$STAGE"
    [[ -n $SRC_COPY && -d $SRC_COPY ]] && rm -rf -- "$SRC_COPY"
    return 0
}
trap cleanup EXIT

# The enrolment is checked in a private folder (mode 0700) before it goes to
# /etc/greengate: in /run (RAM) when possible, so the private key is written
# to the SD card only once, and /etc is not touched by a run that changes nothing.
new_stage() {
    local base
    for base in /run "${TMPDIR:-/tmp}"; do
        [[ -d $base && -w $base ]] && break
    done
    STAGE=$(mktemp -d "$base/greengate-enrol.XXXXXX")
}

enrol_kind=none boot_dir=""
if [[ $no_enrol == 1 ]]; then
    enrol_kind=none
elif [[ -n $bundle ]]; then
    [[ -f $bundle ]] || die "--bundle $bundle: no such file (copy <kiosk-id>.tar from 'greengate-provision enrol' onto the Pi)"
    enrol_kind=bundle
elif [[ -n $fleet ]]; then
    enrol_kind=token
elif [[ -n $boot ]]; then
    [[ -d $boot ]] || die "--boot $boot: no such folder"
    if [[ -f $boot/kiosk.toml ]]; then boot_dir=$boot
    elif [[ -f $boot/greengate/kiosk.toml ]]; then boot_dir=$boot/greengate
    else die "--boot $boot: no kiosk.toml in it nor in $boot/greengate"
    fi
    enrol_kind=boot
else
    for d in "$R/boot/firmware/greengate" "$R/boot/greengate"; do
        if [[ -d $d ]]; then boot_dir=$d; enrol_kind=boot; break; fi
    done
    if [[ $enrol_kind == none && -f $CONFIG ]]; then
        log "enrolment: none given, keeping $CONFIG (kiosk $(toml_id "$CONFIG"))"
    elif [[ $enrol_kind == none ]]; then
        die "no enrolment found: $CONFIG does not exist and there is no greengate/ folder in $R/boot/firmware or $R/boot. Give --bundle <kiosk-id>.tar, --boot DIR or --fleet URL --token TOKEN (or --no-enrol to install the software only)"
    fi
fi

kiosk_id=""
case $enrol_kind in
    bundle)
        log "enrolment: checking bundle $bundle"
        new_stage
        msg=$(extract_bundle "$bundle" "$STAGE" 2>&1) ||
            die "enrolment bundle $bundle refused: ${msg//$'\n'/ }. Nothing was installed; make a new bundle with 'greengate-provision enrol'"
        ;;
    boot)
        log "enrolment: checking folder $boot_dir"
        new_stage
        for f in "${BUNDLE_FILES[@]}"; do
            if [[ -L $boot_dir/$f ]]; then
                die "enrolment folder $boot_dir refused: $f is a symbolic link"
            fi
            if [[ -f $boot_dir/$f ]]; then cp -- "$boot_dir/$f" "$STAGE/$f"; fi
        done
        ;;
esac
if [[ -n $STAGE ]]; then
    src=${bundle:-$boot_dir}
    kiosk_id=$(check_enrolment "$STAGE" 2>&1) ||
        die "enrolment from $src refused: ${kiosk_id//$'\n'/ }. Nothing was installed; make a new bundle with 'greengate-provision enrol'"
    log "enrolment: bundle for kiosk $kiosk_id is complete"
fi

# An existing, different config is replaced only with --force.
enrol_install=0
if [[ $enrol_kind == bundle || $enrol_kind == boot ]]; then
    if [[ -f $CONFIG ]] && same_files "$STAGE" "$ETC"; then
        log "enrolment: $ETC already holds this bundle (kiosk $kiosk_id)"
    elif [[ -f $CONFIG && $force != 1 ]]; then
        die "$CONFIG exists (kiosk $(toml_id "$CONFIG")) and differs from the new bundle (kiosk $kiosk_id); re-run with --force to replace it"
    else
        enrol_install=1
    fi
elif [[ $enrol_kind == token && -f $CONFIG && $force != 1 ]]; then
    die "$CONFIG exists (kiosk $(toml_id "$CONFIG")); re-run with --force to enrol again (the token is not used until then)"
fi

# --- system packages -------------------------------------------------------------------
if [[ $no_apt == 1 ]]; then
    log "system packages: skipped (--no-apt)"
elif [[ $ROOT != / ]]; then
    log "system packages: skipped (--root $ROOT; install them in the image: ${APT_REQUIRED[*]} ${APT_OPTIONAL[*]})"
elif ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
    warn "not a Debian-based system; make sure these are installed: ${APT_REQUIRED[*]} ${APT_OPTIONAL[*]}"
else
    missing=() missing_optional=()
    for item in "${APT_REQUIRED[@]}"; do item_installed "$item" || missing+=("$item"); done
    for item in "${APT_OPTIONAL[@]}"; do item_installed "$item" || missing_optional+=("$item"); done
    # An optional package apt does not know (plain Debian has no picamera2) is
    # not worth an apt-get update on every run, unless apt knows nothing yet.
    apt_lists=0
    compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null && apt_lists=1
    want_optional=()
    for item in "${missing_optional[@]}"; do
        if [[ $apt_lists == 0 ]] || has_candidate "$item"; then
            want_optional+=("$item")
        else
            warn "$item is not available (it comes from the Raspberry Pi apt repository): the camera source (kind = \"picamera2\") cannot run; the scanner, v4l2 and folder sources can"
        fi
    done
    if [[ ${#missing[@]} -eq 0 && ${#want_optional[@]} -eq 0 ]]; then
        log "system packages OK (${APT_REQUIRED[*]}${missing_optional[*]:+; without ${missing_optional[*]}})"
    else
        log "system packages: apt-get update"
        # apt_wait (apt-alternatives.sh): an apt still running after boot is waited for
        apt_wait env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=10 update -q
        to_install=()
        for item in "${missing[@]}"; do to_install+=("$(item_pick "$item")"); done
        for item in "${want_optional[@]}"; do
            if has_candidate "$item"; then
                to_install+=("$item")
            else
                warn "$item is not available (it comes from the Raspberry Pi apt repository): the camera source (kind = \"picamera2\") cannot run; the scanner, v4l2 and folder sources can"
            fi
        done
        if [[ ${#to_install[@]} -gt 0 ]]; then
            log "system packages: installing ${to_install[*]}"
            apt_wait env DEBIAN_FRONTEND=noninteractive \
                apt-get -o DPkg::Lock::Timeout=10 install -y -q --no-install-recommends "${to_install[@]}"
        fi
    fi
fi

# --- user and groups --------------------------------------------------------------------
if [[ $no_user == 1 ]]; then
    log "user $KIOSK_USER: skipped (--no-user)"
elif [[ $ROOT != / && ! -f $ROOT/etc/passwd ]]; then
    warn "user $KIOSK_USER: $ROOT/etc/passwd does not exist; not created"
else
    ua_root=()
    [[ $ROOT != / ]] && ua_root=(--root "$ROOT")
    if user_exists "$KIOSK_USER"; then
        log "user $KIOSK_USER OK"
    else
        log "user $KIOSK_USER: creating (system user, home /var/lib/greengate, no login)"
        useradd "${ua_root[@]}" --system --user-group --home-dir /var/lib/greengate --no-create-home \
            --shell /usr/sbin/nologin "$KIOSK_USER"
    fi
    for g in "${KIOSK_GROUPS[@]}"; do
        if [[ -z $(group_gid "$g") ]]; then
            warn "group $g does not exist: the unit (SupplementaryGroups=${KIOSK_GROUPS[*]}) will not start until it does; Raspberry Pi OS has it"
        elif in_group "$KIOSK_USER" "$g"; then
            log "user $KIOSK_USER: in group $g"
        else
            log "user $KIOSK_USER: adding to group $g"
            usermod "${ua_root[@]}" -a -G "$g" "$KIOSK_USER"
        fi
    done
fi

# --- venv and the package ---------------------------------------------------------------
export PIP_DISABLE_PIP_VERSION_CHECK=1
package_changed=0
if [[ $no_venv == 1 ]]; then
    log "venv: skipped (--no-venv)"
else
    # Debian's own interpreter: apt's python3-picamera2 is importable only from it.
    python=${PYTHON:-python3}
    [[ -z ${PYTHON:-} && -x /usr/bin/python3 ]] && python=/usr/bin/python3
    if [[ -x $VENV/bin/python ]] && grep -qiE '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg" 2>/dev/null &&
        "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1; then
        log "venv $VENV OK"
    else
        if [[ -e $VENV ]]; then
            log "venv $VENV: recreating it with --system-site-packages (apt's picamera2/libcamera must be importable)"
        else
            log "venv $VENV: creating it with --system-site-packages"
        fi
        "$python" -c "import sys; sys.exit(sys.version_info < (${MIN_PY[0]}, ${MIN_PY[1]}))" 2>/dev/null ||
            die "$python is missing or older than ${MIN_PY[0]}.${MIN_PY[1]}: the kiosk needs Raspberry Pi OS bookworm (Python 3.11) or newer"
        mkdir -p "$(dirname "$VENV")"
        "$python" -m venv --clear --system-site-packages "$VENV" ||
            die "cannot create $VENV: install python3-venv (apt-get install python3-venv) or drop --no-apt"
        rm -f "$STAMP"
    fi
    want_stamp=$(source_stamp)
    if [[ $(cat "$STAMP" 2>/dev/null || true) == "$want_stamp" ]]; then
        log "package greengate already installed (checkout unchanged)"
    else
        rm -f "$STAMP"
        # Built from a clean copy: setuptools leaves build/ behind in the source
        # tree, and a stale build/lib would ship deleted modules next time.
        SRC_COPY=$(mktemp -d "${TMPDIR:-/tmp}/greengate-src.XXXXXX")
        (cd "$CHECKOUT" && cp -R pyproject.toml README.md greengate device fleet provisioning "$SRC_COPY/")
        log "package greengate: pip install '${CHECKOUT}[zxing]' (needs the network; takes minutes on a Pi)"
        if ! "$VENV/bin/python" -m pip install --quiet "${SRC_COPY}[zxing]"; then
            warn "installing with the zxing extra failed; trying without it (decoder backend 'auto' then uses pyzbar)"
            "$VENV/bin/python" -m pip install --quiet "$SRC_COPY" ||
                die "pip install of $CHECKOUT failed (see above); check the network (PyPI) and re-run"
        fi
        rm -rf -- "$SRC_COPY"
        printf '%s\n' "$want_stamp" >"$STAMP"
        package_changed=1
        log "package greengate: installed"
    fi
fi

# --- online enrolment (needs the venv) ------------------------------------------------------
if [[ $enrol_kind == token ]]; then
    [[ -x $KIOSK_BIN ]] ||
        die "$KIOSK_BIN not found: the enrolment needs the installed package (drop --no-venv, or set GREENGATE_KIOSK_BIN)"
    new_stage
    log "enrolment: $KIOSK_BIN enrol --fleet $fleet --token ... (key made on this kiosk)"
    if ! "$KIOSK_BIN" enrol --fleet "$fleet" --token "$token" --dir "$STAGE"; then
        die "greengate-kiosk enrol failed (see above): check the fleet URL, the network and the token (tokens work once and expire; ask the fleet operator for a new one). Nothing was installed"
    fi
    kiosk_id=$(check_enrolment "$STAGE" 2>&1) ||
        die "greengate-kiosk enrol wrote an incomplete enrolment: ${kiosk_id//$'\n'/ }"
    log "enrolment: kiosk $kiosk_id enrolled with $fleet"
    enrol_install=1
fi

# --- /etc/greengate --------------------------------------------------------------------------
gid=$(group_gid "$KIOSK_USER")
own=() owner_text="owner unchanged"
if [[ $is_root == 1 && -n $gid ]]; then
    own=(-o 0 -g "$gid") owner_text="root:$KIOSK_USER"
elif [[ $enrol_install == 0 && ! -d $ETC ]]; then
    :  # nothing to own yet
elif [[ $is_root == 0 ]]; then
    warn "not root: $ETC stays owned by $(id -un); the service (user $KIOSK_USER) needs root:$KIOSK_USER"
else
    warn "group $KIOSK_USER does not exist in $ROOT: $ETC stays root:root and the service cannot read it; run again without --no-user"
fi

config_changed=0
if [[ $enrol_install == 1 ]]; then
    install -d -m 0750 "${own[@]}" "$ETC"
    # The config last: a half-finished install never looks complete.
    for f in "${BUNDLE_FILES[@]:1}" "${BUNDLE_FILES[0]}"; do
        install -m 0640 "${own[@]}" "$STAGE/$f" "$ETC/.$f.new"
        mv -f -- "$ETC/.$f.new" "$ETC/$f"
    done
    same_files "$STAGE" "$ETC" || die "the files in $ETC differ from the enrolment after copying (disk full or failing?)"
    config_changed=1
    log "enrolment: kiosk $kiosk_id installed in $ETC ($owner_text, 0750 / 0640)"
fi
if [[ -d $ETC ]]; then
    # Also for an existing enrolment: the service reads it, nobody else may.
    if [[ ${#own[@]} -gt 0 ]]; then chown "0:$gid" "$ETC"; fi
    chmod 0750 "$ETC"
    for f in "${BUNDLE_FILES[@]}"; do
        [[ -f $ETC/$f ]] || continue
        if [[ ${#own[@]} -gt 0 ]]; then chown "0:$gid" "$ETC/$f"; fi
        chmod 0640 "$ETC/$f"
    done
    if [[ $enrol_install == 0 ]]; then
        log "$ETC: ownership and modes checked (kiosk $(toml_id "$CONFIG"))"
    fi
fi

# The boot partition (FAT, readable by everyone) must not keep the key.
if [[ $enrol_kind == boot ]]; then
    same_files "$boot_dir" "$ETC" ||
        die "$boot_dir differs from $ETC; its files were left in place"
    for f in "${BUNDLE_FILES[@]}"; do
        if [[ $f == kiosk.key ]] && command -v shred >/dev/null 2>&1; then
            shred -f -z -n 1 -u -- "$boot_dir/$f" 2>/dev/null || rm -f -- "$boot_dir/$f"
        else
            rm -f -- "$boot_dir/$f"
        fi
        rm -f -- "$boot_dir/._$f"  # macOS AppleDouble companions
    done
    sync
    if rmdir -- "$boot_dir" 2>/dev/null; then
        log "enrolment: removed $boot_dir from the boot partition"
    else
        warn "removed the enrolment files from $boot_dir; other files are left in it: $(cd "$boot_dir" && shopt -s dotglob nullglob && printf "%s " *)"
    fi
fi

# --- systemd unit -----------------------------------------------------------------------------
unit_changed=0
if cmp -s "$CHECKOUT/systemd/$UNIT_NAME" "$UNIT_DIR/$UNIT_NAME"; then
    log "unit $UNIT_DIR/$UNIT_NAME OK"
else
    mkdir -p "$UNIT_DIR"
    install -m 0644 "$CHECKOUT/systemd/$UNIT_NAME" "$UNIT_DIR/$UNIT_NAME"
    unit_changed=1
    log "unit: installed $UNIT_DIR/$UNIT_NAME"
fi

if [[ $no_systemctl == 1 ]]; then
    log "systemctl: skipped (--no-systemctl)"
elif [[ $ROOT != / ]]; then
    if [[ -f $CONFIG ]] && systemctl --root="$ROOT" is-enabled --quiet "$UNIT_NAME" 2>/dev/null; then
        log "$UNIT_NAME enabled in $ROOT"
    elif [[ -f $CONFIG ]]; then
        log "systemctl --root $ROOT enable $UNIT_NAME (starts at the image's first boot)"
        systemctl --root="$ROOT" enable --quiet "$UNIT_NAME"
    else
        log "systemctl: $UNIT_NAME not enabled (no $CONFIG yet)"
    fi
else
    if [[ $unit_changed == 1 ]]; then
        log "systemctl daemon-reload"
        systemctl daemon-reload
    fi
    if [[ ! -f $CONFIG ]]; then
        log "systemctl: $UNIT_NAME not enabled: no $CONFIG yet; run this script again with --bundle or --fleet/--token"
    else
        if ! systemctl is-enabled --quiet "$UNIT_NAME" 2>/dev/null; then
            log "systemctl enable $UNIT_NAME"
            systemctl enable --quiet "$UNIT_NAME"
        fi
        if systemctl is-active --quiet "$UNIT_NAME"; then
            if [[ $config_changed == 1 || $unit_changed == 1 || $package_changed == 1 ]]; then
                log "systemctl restart $UNIT_NAME (new enrolment, unit or package)"
                systemctl restart "$UNIT_NAME" ||
                    warn "$UNIT_NAME did not restart: journalctl -u $UNIT_NAME -e says why"
            else
                log "$UNIT_NAME is running"
            fi
        else
            log "systemctl start $UNIT_NAME"
            systemctl start "$UNIT_NAME" ||
                warn "$UNIT_NAME did not start: journalctl -u $UNIT_NAME -e says why"
        fi
    fi
fi

log "done. Check: sudo systemctl stop greengate-kiosk; sudo -u $KIOSK_USER /opt/greengate/.venv/bin/greengate-kiosk selftest --config /etc/greengate/kiosk.toml; sudo systemctl start greengate-kiosk; journalctl -u greengate-kiosk -f"
