#!/usr/bin/env bash
# Installs the real mail software the slow tests talk to (tests/peers/README.md): Postfix (with
# smtp-source and smtp-sink), swaks with its TLS module, Dovecot's POP3 server, fetchmail and
# openssl. Debian only; run as root, with no standard input needed.
#
# Idempotent and quick when everything is there: dpkg-query decides, and apt-get (update
# included) runs only for what is missing. Afterwards no system-wide Postfix or Dovecot is
# running or enabled at boot: the tests start private instances of their own on loopback ports.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# libnet-ssleay-perl is only a Recommends of swaks, and swaks cannot do TLS without it.
packages=(postfix swaks libnet-ssleay-perl dovecot-core dovecot-pop3d fetchmail openssl)
services=(postfix dovecot fetchmail)

missing=()
for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$package")
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "tests/peers/install.sh: installing ${missing[*]}" >&2
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
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null
fi

# Stop whatever system instance an install (or anyone) left running, then keep it from
# starting at boot, under systemd and SysV init alike. Each step is quiet and harmless when
# there is nothing to do.
if [ -f /etc/postfix/main.cf ] && postfix status >/dev/null 2>&1; then
    postfix stop >/dev/null 2>&1 || true
fi
if [ -s /run/dovecot/master.pid ] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
    doveadm stop >/dev/null 2>&1 || kill "$(cat /run/dovecot/master.pid)" 2>/dev/null || true
fi
for service in "${services[@]}"; do
    if [ -d /run/systemd/system ]; then
        systemctl stop "$service.service" >/dev/null 2>&1 || true
    fi
    if [ -x /usr/bin/systemctl ]; then
        # Works without a running systemd: it only removes the unit's links.
        systemctl disable "$service.service" >/dev/null 2>&1 || true
    fi
    if [ -e "/etc/init.d/$service" ]; then
        update-rc.d "$service" disable >/dev/null 2>&1 || true
    fi
done
if [ -x /usr/bin/systemctl ]; then
    systemctl disable dovecot.socket >/dev/null 2>&1 || true
fi

# Every program the tests call must now be where they look for it.
for tool in /usr/sbin/postfix /usr/sbin/postconf /usr/sbin/postqueue /usr/sbin/sendmail \
    /usr/sbin/smtp-source /usr/sbin/smtp-sink /usr/bin/swaks /usr/sbin/dovecot \
    /usr/bin/doveadm /usr/bin/fetchmail /usr/bin/openssl; do
    if [ ! -x "$tool" ]; then
        echo "tests/peers/install.sh: $tool is missing after the install" >&2
        exit 1
    fi
done
perl -MNet::SSLeay -e1 2>/dev/null || {
    echo "tests/peers/install.sh: swaks has no TLS (perl Net::SSLeay missing)" >&2
    exit 1
}
