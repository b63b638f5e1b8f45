#!/usr/bin/env bash
# The one script that installs Debian packages for this repository. The Makefile calls it;
# .ci/run calls it once first, to install `make` itself.
#
#   tools/system-packages.sh venv   python3-venv, if `$PYTHON -m venv` cannot work yet
#                                   (`make run` and every venv the Makefile creates)
#   tools/system-packages.sh test   that, plus everything `make test` runs: make, rsync,
#                                   Debian's chromium (driven by Playwright) with
#                                   fonts-liberation, the real mail software of tests/peers
#                                   (README.md there): postfix (smtp-source, smtp-sink), swaks
#                                   and libnet-ssleay-perl (its TLS), dovecot-core,
#                                   dovecot-pop3d, fetchmail, openssl; systemd
#                                   (systemd-analyze) and procps (/bin/kill, which
#                                   ops/gateway.service names) for tests/test_ops.py;
#                                   prometheus (the server that scrapes the gateway in
#                                   tests/test_metrics.py); pebble (Let's Encrypt's test
#                                   ACME CA, tests/test_acme.py); postgresql (PostgreSQL 15,
#                                   server and client: the private clusters of
#                                   tests/peers/postgres.py, the fleet store's database)
#
# Quick and quiet when everything is there: one dpkg-query decides, and nothing else runs
# (no apt-get update, no sudo). Otherwise it installs what is missing, as root, or through
# sudo when run by another user; when neither works it names the missing packages and exits 1.
# Packages go in without their Recommends, no questions asked (DEBIAN_FRONTEND=noninteractive),
# and a Postfix, Dovecot, fetchmail, Prometheus or PostgreSQL it installs is left stopped and
# disabled at boot (and PostgreSQL without the `main` cluster Debian would create): the tests
# start private instances of their own on loopback ports. Ones that were installed before are
# left alone.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PYTHON=${PYTHON:-python3}
me=tools/system-packages.sh

group=${1:-test}
case "$group" in
venv) packages=() ;;
test)
    packages=(make rsync chromium fonts-liberation postfix swaks libnet-ssleay-perl
        dovecot-core dovecot-pop3d fetchmail openssl systemd procps prometheus pebble
        postgresql)
    ;;
*)
    echo "usage: $me [venv|test]" >&2
    exit 2
    ;;
esac

missing=()
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#packages[@]} -gt 0 ]; then
    installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${packages[@]}" \
        2>/dev/null || true)
    for package in "${packages[@]}"; do
        grep -qx "$package installed" <<<"$installed" || missing+=("$package")
    done
fi

cannot_install() {
    echo "$me: $1; missing Debian packages: ${missing[*]}" >&2
    echo "    install them as root (apt-get install ${missing[*]}) or let this user use sudo," >&2
    echo "    then run the same command again" >&2
    exit 1
}

if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -- true; then
        echo "$me: installing ${missing[*]} with sudo" >&2
        exec sudo -- env PYTHON="$PYTHON" bash "$0" "$group"
    fi
    cannot_install "not root, and sudo is not available or refused"
fi

if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || cannot_install "no apt-get here (not Debian?)"
    echo "$me: installing ${missing[*]}" >&2
    # "No configuration": no /etc/postfix/main.cf, no questions, nothing for a system
    # instance to start with.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # Keep the maintainer scripts from starting services while they install (Docker images
    # ship such a policy already; put one in place for the install only where there is none).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    # No `main` cluster for a PostgreSQL installed here: postgresql-common's postinst asks
    # createcluster.conf, which reads this folder (include_dir). Nothing else uses the setting.
    no_main=/etc/postgresql-common/createcluster.d/no-main-cluster.conf
    for package in "${missing[@]}"; do
        if [ "$package" = postgresql ] && [ ! -e "$no_main" ]; then
            mkdir -p "$(dirname "$no_main")"
            echo "create_main_cluster = off" >"$no_main"
        fi
    done
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null

    # Stop what this install may have started, and keep it from starting at boot, under
    # systemd and SysV init alike. Each step is quiet and harmless when there is nothing to do.
    services=()
    for package in "${missing[@]}"; do
        case "$package" in
        postfix) services+=(postfix) ;;
        dovecot-core) services+=(dovecot) ;;
        fetchmail) services+=(fetchmail) ;;
        prometheus) services+=(prometheus) ;;
        pebble) services+=(pebble) ;; # Debian ships no unit for it today; harmless if none
        postgresql) services+=(postgresql) ;;
        esac
    done
    for service in "${services[@]}"; do
        case "$service" in
        postfix)
            if [ -f /etc/postfix/main.cf ] && postfix status >/dev/null 2>&1; then
                postfix stop >/dev/null 2>&1 || true
            fi
            ;;
        dovecot)
            pid=$(cat /run/dovecot/master.pid 2>/dev/null || true)
            if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
                doveadm stop >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
            fi
            ;;
        esac
        if [ -d /run/systemd/system ]; then
            systemctl stop "$service.service" >/dev/null 2>&1 || true
        fi
        if [ -x /usr/bin/systemctl ]; then
            # Works without a running systemd: it only removes the unit's links.
            systemctl disable "$service.service" >/dev/null 2>&1 || true
            [ "$service" != dovecot ] || systemctl disable dovecot.socket >/dev/null 2>&1 || true
        fi
        if [ -e "/etc/init.d/$service" ]; then
            update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    done
fi

# Everything the tests call must now be where they look for it.
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || {
    echo "$me: $PYTHON -m venv still cannot work (python3-venv)" >&2
    exit 1
}
[ "$group" = test ] || exit 0
for tool in /usr/bin/make /usr/bin/rsync /usr/bin/chromium /usr/sbin/postfix /usr/sbin/postconf \
    /usr/sbin/postqueue /usr/sbin/sendmail /usr/sbin/smtp-source /usr/sbin/smtp-sink \
    /usr/bin/swaks /usr/sbin/dovecot /usr/bin/doveadm /usr/bin/fetchmail /usr/bin/openssl \
    /usr/bin/systemd-analyze /bin/kill /usr/bin/pebble /usr/lib/postgresql/15/bin/initdb \
    /usr/lib/postgresql/15/bin/pg_ctl /usr/lib/postgresql/15/bin/postgres \
    /usr/lib/postgresql/15/bin/pg_basebackup /usr/lib/postgresql/15/bin/psql; do
    if [ ! -x "$tool" ]; then
        echo "$me: $tool is missing after the install" >&2
        exit 1
    fi
done
perl -MNet::SSLeay -e1 2>/dev/null || {
    echo "$me: swaks has no TLS (perl Net::SSLeay missing)" >&2
    exit 1
}
