#!/bin/sh
# Maintainer scripts of the outpost-agent and outpost-aggregator packages, .deb and .rpm alike.
#
# .deb: packaging/deb/<package>/{postinst,prerm,postrm} are links to this file; dpkg names the
#       package and the script in DPKG_MAINTSCRIPT_PACKAGE and DPKG_MAINTSCRIPT_NAME, and
#       cargo-deb replaces the DEBHELPER marker below with the systemd snippets (enable, start,
#       stop, daemon-reload).
# .rpm: scripts/package prepends `outpost_package=...` and `outpost_script=pre|post|preun|postun`
#       to this file for each scriptlet (rpm has no systemd macros outside rpmbuild).
#
# POSIX sh (dash has no pipefail; nothing here uses a pipeline).
set -eu

outpost_package="${outpost_package:-${DPKG_MAINTSCRIPT_PACKAGE:-}}"
outpost_script="${outpost_script:-${DPKG_MAINTSCRIPT_NAME:-}}"
if [ -n "${DPKG_MAINTSCRIPT_NAME:-}" ]; then outpost_format=deb; else outpost_format=rpm; fi
case "$outpost_package" in
    outpost-agent) outpost_other=outpost-aggregator ;;
    outpost-aggregator) outpost_other=outpost-agent ;;
    *)
        echo "outpost maintainer script: unknown package '$outpost_package'" >&2
        exit 1
        ;;
esac
if [ -z "$outpost_script" ]; then
    echo "outpost maintainer script: which script to run is not set" >&2
    exit 1
fi

OUTPOST_USER=outpost
OUTPOST_HOME=/var/lib/outpost
OUTPOST_ETC=/etc/outpost
OUTPOST_TLS=/etc/outpost/tls
OUTPOST_LOG=/var/log/outpost

say() { echo "$outpost_package: $*"; }

# Is systemd the running init? (Not in containers and chroots: then nothing is started.)
systemd_running() { [ -d /run/systemd/system ]; }

# Is the other Outpost package on this host (installed, or removed with its configuration)?
other_package_present() {
    if [ "$outpost_format" = deb ]; then
        status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$outpost_other" 2>/dev/null || true)
        case "$status" in
            "" | un*) return 1 ;;
            *) return 0 ;;
        esac
    else
        rpm -q --quiet "$outpost_other"
    fi
}

ensure_user() {
    if ! getent group "$OUTPOST_USER" >/dev/null; then
        groupadd --system "$OUTPOST_USER"
    fi
    if ! getent passwd "$OUTPOST_USER" >/dev/null; then
        shell=/usr/sbin/nologin
        [ -x "$shell" ] || shell=/sbin/nologin
        [ -x "$shell" ] || shell=/bin/false
        useradd --system --gid "$OUTPOST_USER" --home-dir "$OUTPOST_HOME" --no-create-home \
            --shell "$shell" --comment "Outpost monitoring" "$OUTPOST_USER"
    fi
}

# install -d leaves an existing directory's content alone and sets its owner and mode.
ensure_dir() { install -d -m "$1" -o "$2" -g "$3" "$4"; }

ensure_dirs() {
    ensure_dir 0755 root root "$OUTPOST_ETC"
    # Writable by the services: the agent renews its key and certificate here, the aggregator
    # records the certificates it issues at enrollment and renewal, and its revocation list.
    ensure_dir 0770 root "$OUTPOST_USER" "$OUTPOST_TLS"
    ensure_dir 0750 "$OUTPOST_USER" "$OUTPOST_USER" "$OUTPOST_HOME"
    ensure_dir 0750 "$OUTPOST_USER" "$OUTPOST_USER" "$OUTPOST_LOG"
    case "$outpost_package" in
        outpost-agent) ensure_dir 0750 "$OUTPOST_USER" "$OUTPOST_USER" "$OUTPOST_HOME/agent" ;;
        outpost-aggregator) ensure_dir 0750 "$OUTPOST_USER" "$OUTPOST_USER" "$OUTPOST_HOME/aggregator" ;;
    esac
}

# root:outpost 0640, if the file exists (an administrator may have removed it).
group_readable() {
    for f in "$@"; do
        if [ -f "$f" ]; then
            chown root:"$OUTPOST_USER" "$f"
            chmod 0640 "$f"
        fi
    done
}

# The agent's key and certificate belong to the service, which renews them in place.
agent_owned() {
    for f in "$@"; do
        if [ -f "$f" ]; then
            chown "$OUTPOST_USER:$OUTPOST_USER" "$f"
        fi
    done
    if [ -f "$OUTPOST_TLS/agent.key" ]; then chmod 0600 "$OUTPOST_TLS/agent.key"; fi
}

# The packaged file is written root:root 0640 on every install and upgrade.
fix_config() {
    case "$outpost_package" in
        outpost-agent)
            group_readable "$OUTPOST_ETC/agent.toml"
            agent_owned "$OUTPOST_TLS/agent.key" "$OUTPOST_TLS/agent.pem"
            ;;
        outpost-aggregator) group_readable "$OUTPOST_ETC/aggregator.toml" "$OUTPOST_TLS/server.key" ;;
    esac
}

# A first CA for the aggregator; an existing one is never replaced. The service signs the
# certificates of enrolling and renewing agents, so it reads the CA key (root:outpost 0640) and
# writes agents/ and the lock that `pki` commands share with it.
ensure_pki() {
    if [ -e "$OUTPOST_TLS/ca.pem" ] || [ -e "$OUTPOST_TLS/ca.key" ]; then
        say "keeping the existing CA in $OUTPOST_TLS"
    else
        name=$(hostname --fqdn 2>/dev/null || hostname 2>/dev/null || true)
        case "$name" in
            "" | localhost | localhost.* | *[!A-Za-z0-9.-]*) set -- ;;
            *) set -- --server-name "$name" ;;
        esac
        if ! outpost-aggregator pki init --dir "$OUTPOST_TLS" "$@"; then
            echo "$outpost_package: could not create the CA in $OUTPOST_TLS; run" \
                "'outpost-aggregator pki init --dir $OUTPOST_TLS' as root, then" \
                "'chgrp outpost $OUTPOST_TLS/server.key && chmod 0640 $OUTPOST_TLS/server.key'" >&2
            return 0
        fi
    fi
    group_readable "$OUTPOST_TLS/server.key" "$OUTPOST_TLS/ca.key"
    if [ -d "$OUTPOST_TLS/agents" ]; then
        chown root:"$OUTPOST_USER" "$OUTPOST_TLS/agents"
        chmod 0770 "$OUTPOST_TLS/agents"
    fi
    touch "$OUTPOST_TLS/.lock"
    chown root:"$OUTPOST_USER" "$OUTPOST_TLS/.lock"
    chmod 0660 "$OUTPOST_TLS/.lock"
}

# Does the agent's configuration pass, read as the service user reads it?
agent_configured() {
    runuser -u "$OUTPOST_USER" -- /usr/bin/outpost-agent --config "$OUTPOST_ETC/agent.toml" \
        check-config >/dev/null 2>&1
}

# Enrolls the agent with the token in $OUTPOST_ENROLL_TOKEN or /etc/outpost/enroll.token, if
# there is one and the agent has no certificate yet. The token file is a secret: it goes once
# used. A failure (the aggregator unreachable, a refused token) is reported and leaves the token
# for the agent's first start to try again.
agent_enroll_if_token() {
    token_file="$OUTPOST_ETC/enroll.token"
    [ -e "$OUTPOST_TLS/agent.pem" ] && return 0
    if [ -n "${OUTPOST_ENROLL_TOKEN:-}" ]; then
        # Through a file, so that the token is not on a command line others can read.
        token_file=$(mktemp)
        chmod 0600 "$token_file"
        printf '%s\n' "$OUTPOST_ENROLL_TOKEN" >"$token_file"
    elif [ ! -e "$token_file" ]; then
        return 0
    fi
    if /usr/bin/outpost-agent --config "$OUTPOST_ETC/agent.toml" enroll --token-file "$token_file"; then
        rm -f "$token_file"
    else
        say "enrollment failed; the agent tries again at its first start (outpost-agent enroll --help)"
        [ -n "${OUTPOST_ENROLL_TOKEN:-}" ] && rm -f "$token_file"
    fi
    return 0
}

agent_instructions() {
    id=$(hostname 2>/dev/null || true)
    [ -n "$id" ] || id="<ID>"
    cat <<TEXT
outpost-agent: installed and enabled, but not started: it needs an aggregator and a certificate.
Either enroll it with a token made on the aggregator (outpost-aggregator token create --enroll):
  outpost-agent enroll --token-file FILE && systemctl start outpost-agent
or by hand:
  1. On the aggregator: outpost-aggregator pki issue-agent $id --dir /etc/outpost/tls
  2. Copy its ca.pem, agents/$id.pem and agents/$id.key here as /etc/outpost/tls/ca.pem,
     /etc/outpost/tls/agent.pem and /etc/outpost/tls/agent.key, then
     chown root:outpost /etc/outpost/tls/agent.key && chmod 0640 /etc/outpost/tls/agent.key
  3. Set endpoint = "quic://AGGREGATOR:4433" in [aggregator] of /etc/outpost/agent.toml and check:
     outpost-agent check-config
  4. systemctl start outpost-agent
TEXT
}

# systemctl for rpm, deb-systemd-invoke (which honours policy-rc.d) for deb.
invoke() { # action unit
    if ! systemd_running; then
        return 0
    fi
    if [ "$outpost_format" = deb ]; then
        deb-systemd-invoke "$1" "$2" || say "could not $1 $2"
    else
        systemctl "$1" "$2" || say "could not $1 $2"
    fi
}

# After a first install ($1 = start) the agent starts only when its configuration passes; after
# an upgrade ($1 = try-restart) a running agent is restarted.
agent_start_if_configured() {
    if agent_configured; then
        invoke "$1" outpost-agent.service
    else
        agent_instructions
    fi
}

rpm_enable() {
    if systemd_running; then
        systemctl daemon-reload || true
    fi
    # A preset works without a running systemd (it only writes links).
    if command -v systemctl >/dev/null 2>&1; then
        systemctl preset "$outpost_package.service" >/dev/null 2>&1 ||
            systemctl enable "$outpost_package.service" >/dev/null 2>&1 || true
    fi
}

# Remove what this package left in /etc/outpost, /var/lib/outpost and /var/log/outpost; the
# shared directories, the CA and the user go with the last Outpost package.
purge() {
    case "$outpost_package" in
        outpost-agent)
            rm -rf "$OUTPOST_HOME/agent"
            rm -f "$OUTPOST_TLS/agent.pem" "$OUTPOST_TLS/agent.key" "$OUTPOST_ETC/agent.toml"
            rm -f "$OUTPOST_TLS"/agent.*.new "$OUTPOST_TLS"/*.tmp "$OUTPOST_ETC/enroll.token"
            rm -f "$OUTPOST_ETC"/agent.toml.dpkg-* "$OUTPOST_ETC"/agent.toml.rpm*
            ;;
        outpost-aggregator)
            rm -rf "$OUTPOST_HOME/aggregator" "$OUTPOST_ETC/rules.d"
            rm -f "$OUTPOST_ETC/aggregator.toml"
            rm -f "$OUTPOST_ETC"/aggregator.toml.dpkg-* "$OUTPOST_ETC"/aggregator.toml.rpm*
            ;;
    esac
    rm -f "$OUTPOST_LOG/$outpost_package".*
    if other_package_present; then
        return 0
    fi
    rm -rf "$OUTPOST_TLS" "$OUTPOST_ETC" "$OUTPOST_HOME" "$OUTPOST_LOG"
    if getent passwd "$OUTPOST_USER" >/dev/null; then
        userdel "$OUTPOST_USER" || say "could not remove the user $OUTPOST_USER"
    fi
    if getent group "$OUTPOST_USER" >/dev/null; then
        groupdel "$OUTPOST_USER" || say "could not remove the group $OUTPOST_USER"
    fi
}

# Work done before the DEBHELPER snippets (which enable, start and stop the units).
before() {
    case "$outpost_format:$outpost_script" in
        deb:postinst)
            if [ "${1:-}" = configure ]; then
                ensure_user
                ensure_dirs
                if [ "$outpost_package" = outpost-agent ]; then
                    agent_enroll_if_token
                fi
                fix_config
                if [ "$outpost_package" = outpost-aggregator ]; then
                    ensure_pki
                fi
            fi
            ;;
        rpm:pre)
            ensure_user
            ;;
        rpm:post)
            ensure_dirs
            if [ "$outpost_package" = outpost-agent ]; then
                agent_enroll_if_token
            fi
            fix_config
            if [ "$outpost_package" = outpost-aggregator ]; then
                ensure_pki
            fi
            # $1: 1 on a first install, 2 or more on an upgrade.
            if [ "${1:-1}" -le 1 ]; then
                rpm_enable
            elif [ "$outpost_package" = outpost-aggregator ]; then
                invoke try-restart outpost-aggregator.service
            fi
            ;;
        rpm:preun)
            # $1: 0 when the package is erased, 1 on an upgrade.
            if [ "${1:-0}" -eq 0 ]; then
                invoke stop "$outpost_package.service"
                if command -v systemctl >/dev/null 2>&1; then
                    systemctl disable "$outpost_package.service" >/dev/null 2>&1 || true
                fi
            fi
            ;;
        rpm:postun)
            if systemd_running; then
                systemctl daemon-reload || true
            fi
            # rpm keeps modified configuration (as .rpmsave), the state and the user on erase.
            ;;
        deb:prerm)
            # The aggregator's unit is stopped by the DEBHELPER snippet; the agent's is not
            # started by it, so it is stopped here.
            if [ "${1:-}" = remove ] && [ "$outpost_package" = outpost-agent ]; then
                invoke stop outpost-agent.service
            fi
            ;;
        deb:postrm) ;;
        *)
            echo "outpost maintainer script: unknown script '$outpost_script'" >&2
            exit 1
            ;;
    esac
}

# Work done after the DEBHELPER snippets.
after() {
    case "$outpost_format:$outpost_script" in
        deb:postinst)
            # $2: the version configured before, empty on a first install.
            if [ "${1:-}" = configure ] && [ "$outpost_package" = outpost-agent ]; then
                if [ -z "${2:-}" ]; then
                    agent_start_if_configured start
                else
                    agent_start_if_configured try-restart
                fi
            fi
            ;;
        rpm:post)
            if [ "$outpost_package" = outpost-agent ]; then
                if [ "${1:-1}" -le 1 ]; then
                    agent_start_if_configured start
                else
                    agent_start_if_configured try-restart
                fi
            fi
            ;;
        deb:postrm)
            if [ "${1:-}" = purge ]; then
                purge
            fi
            ;;
    esac
}

before "$@"

#DEBHELPER#

after "$@"
exit 0
