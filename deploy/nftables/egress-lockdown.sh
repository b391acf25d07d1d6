#!/bin/sh
# Apply the egressgate egress lock-down (or its monitor variant) with this host's parameters.
#
#   egress-lockdown.sh --wan eth1 --gateway-uid 990                # egressgate runs on this host
#   egress-lockdown.sh --wan eth1 --gateway-addr 10.0.0.5 --gateway-iface eth2   # egressgate runs
#                    behind this router, on its own segment (eth2), never on the clients' segment
#   egress-lockdown.sh --monitor --wan eth1 --gateway-uid 990      # count would-be bypasses only
#   egress-lockdown.sh --print ...   # print the ruleset instead of loading it
#   egress-lockdown.sh --check ...   # let nft parse and check it without loading (nft -c)
#   egress-lockdown.sh --remove      # roll back: delete the egressgate table
#   --allow-inbound  let new connections from the outside through --wan to the LAN (port
#                    forwards); by default they are dropped and counted (counter `inbound`)
#   --force          accept a --wan / --gateway-iface that does not exist (yet) or is a bridge port
#
# --wan, --gateway-uid, --gateway-addr and --gateway-iface may be repeated; --gateway-addr needs
# --gateway-iface (the interface the gateway hosts' traffic arrives on). The ruleset file and the set elements
# go to nft as ONE transaction: either all of it is in force or none of it (never a half-applied
# lock-down). A --wan that matches no interface here would leave everything open, so it is an
# error (exit 2) unless --force. A --gateway-addr wider than a /24 (IPv4) or /64 (IPv6) is refused.
# Exit codes: 0 ok, 1 nft failed, 2 bad usage.
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
variant=enforce
action=apply
wans=''
uids=''
v4=''
v6=''
gwifs=''
gwif_names=''
inbound=no
force=no
wan_names=''

usage() {
	sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
	exit "${1:-2}"
}
die() {
	echo "egress-lockdown: $*" >&2
	exit 2
}
append() { # append LIST ITEM -> "a, b"
	if [ -z "$1" ]; then printf '%s' "$2"; else printf '%s, %s' "$1" "$2"; fi
}

while [ $# -gt 0 ]; do
	case "$1" in
	--monitor) variant=monitor ;;
	--enforce) variant=enforce ;;
	--print) action=print ;;
	--check) action=check ;;
	--remove) action=remove ;;
	--allow-inbound) inbound=yes ;;
	--force) force=yes ;;
	--wan | --gateway-uid | --gateway-addr | --gateway-iface)
		[ $# -ge 2 ] || die "$1 needs a value"
		val=$2
		case "$1" in
		--wan)
			# Interface names: 1-15 chars, no quotes or spaces (they end up inside "…").
			printf '%s' "$val" | grep -Eq '^[A-Za-z0-9_.@:+-]{1,15}$' || die "bad interface name: $val"
			wans=$(append "$wans" "\"$val\"")
			wan_names="$wan_names $val"
			;;
		--gateway-iface)
			printf '%s' "$val" | grep -Eq '^[A-Za-z0-9_.@:+-]{1,15}$' || die "bad interface name: $val"
			gwifs=$(append "$gwifs" "\"$val\"")
			gwif_names="$gwif_names $val"
			;;
		--gateway-uid)
			printf '%s' "$val" | grep -Eq '^[0-9]{1,10}$' || die "bad uid (numeric only): $val"
			uids=$(append "$uids" "$val")
			;;
		--gateway-addr)
			# Gateway hosts, not networks: 0.0.0.0/0 or ::/0 would let every client out.
			prefix=${val##*/}
			[ "$prefix" != "$val" ] || prefix=''
			if printf '%s' "$val" | grep -Eq '^(25[0-5]|2[0-4][0-9]|1?[0-9]{1,2})(\.(25[0-5]|2[0-4][0-9]|1?[0-9]{1,2})){3}(/[0-9]{1,2})?$'; then
				[ -z "$prefix" ] || { [ "$prefix" -ge 24 ] && [ "$prefix" -le 32 ]; } || die "--gateway-addr $val: list gateway hosts (a /24 at the widest), not a network"
				v4=$(append "$v4" "$val")
			elif printf '%s' "$val" | grep -Eq '^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(/[0-9]{1,3})?$'; then
				[ -z "$prefix" ] || { [ "$prefix" -ge 64 ] && [ "$prefix" -le 128 ]; } || die "--gateway-addr $val: list gateway hosts (a /64 at the widest), not a network"
				v6=$(append "$v6" "$val")
			else
				die "bad address (IPv4/IPv6, optional /prefix): $val"
			fi
			;;
		esac
		shift
		;;
	-h | --help) usage 0 ;;
	*) die "unknown argument: $1 (try --help)" ;;
	esac
	shift
done

if [ "$action" = remove ]; then
	# `table` first so removing an absent table is not an error.
	printf 'table inet egressgate\ndelete table inet egressgate\n' | nft -f -
	exit $?
fi

[ -n "$wans" ] || die "at least one --wan INTERFACE is required"
# The gateway exception is tied to the interface its traffic arrives on: an address alone is what
# any client can claim (a forged source, or the address added to its own interface).
[ -z "$v4$v6" ] || [ -n "$gwifs" ] || die "--gateway-addr needs --gateway-iface INTERFACE (where the gateway hosts' traffic arrives)"
for g in $gwif_names; do
	case ", $wans, " in
	*", \"$g\", "*) die "--gateway-iface $g is also a --wan interface: the outside could claim a gateway address" ;;
	esac
done
[ -n "$uids$v4$v6" ] || echo "egress-lockdown: warning: no --gateway-uid/--gateway-addr: nothing may leave through $wans" >&2

# An interface name that matches nothing here makes an all-accept table: oifname never matches.
has_if() {
	if command -v ip >/dev/null 2>&1; then ip link show dev "$1" >/dev/null 2>&1; else [ -e "/sys/class/net/$1" ]; fi
}
check_if() { # check_if OPTION NAME
	if ! has_if "$2"; then
		[ "$force" = yes ] && { echo "egress-lockdown: warning: $1 $2: no such interface here (--force)" >&2; return 0; }
		die "$1 $2: no such interface here (a typo? names are matched exactly, wildcards such as ppp+ are not; --force for an interface that will exist later)"
	fi
	master=$(ip -o link show dev "$2" 2>/dev/null | sed -n 's/.* master \([^ ]*\) .*/\1/p')
	if [ -n "$master" ]; then
		[ "$force" = yes ] && { echo "egress-lockdown: warning: $1 $2 is a port of $master (--force)" >&2; return 0; }
		die "$1 $2 is a port of $master: routed traffic leaves through $master, give that (or --force)"
	fi
}
if [ "$action" != remove ]; then
	for w in $wan_names; do
		check_if --wan "$w"
		# Traffic leaves where the default route points; a --wan without one is often the wrong
		# device (the physical port under a VLAN, say). A warning only: policy routing exists.
		if has_if "$w" && command -v ip >/dev/null 2>&1 && [ -z "$(ip -4 route show table all default dev "$w" 2>/dev/null)$(ip -6 route show table all default dev "$w" 2>/dev/null)" ]; then
			echo "egress-lockdown: warning: --wan $w carries no default route: is it really the way out?" >&2
		fi
	done
	for g in $gwif_names; do check_if --gateway-iface "$g"; done
fi

if [ "$variant" = monitor ]; then file="$here/egress-monitor.nft"; else file="$here/egress-lockdown.nft"; fi
[ -r "$file" ] || die "missing $file"

render() {
	cat "$file"
	echo
	echo "add element inet egressgate wan_ifs { $wans }"
	[ "$inbound" = no ] || echo "add element inet egressgate inbound_ifs { $wans }"
	[ -z "$uids" ] || echo "add element inet egressgate gateway_uids { $uids }"
	[ -z "$v4" ] || echo "add element inet egressgate gateway_v4 { $v4 }"
	[ -z "$v6" ] || echo "add element inet egressgate gateway_v6 { $v6 }"
	[ -z "$gwifs" ] || echo "add element inet egressgate gateway_ifs { $gwifs }"
}

case "$action" in
print) render ;;
check) render | nft -c -f - || exit 1 ;;
apply) render | nft -f - || exit 1 ;;
esac
