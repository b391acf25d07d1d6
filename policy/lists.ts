/**
 * Built-in detection lists (research/detections.md §6), extended by `detection.lists` in the config.
 * Names are process basenames, matched case-insensitively with any `.exe` suffix removed; a
 * trailing `*` matches any suffix (`proxychains*`). Domains are host patterns (`x` exact, `*.x`
 * any subdomain); provider and storage domains also match every subdomain of the listed name.
 */
import type { Config } from './config.ts';

/** §6.1 proxyware / bandwidth-sharing clients (exe names and container image names). */
export const PROXYWARE_NAMES: readonly string[] = [
  'earnapp',
  'honeygain',
  'pawns-cli',
  'psclient',
  'p2pclient',
  'peer2profit*',
  'traffmonetizer*',
  'repocket',
  'earnfm*',
  'proxyrack',
  'proxylite',
  'proxyservice',
  'bitpingd',
  'packetshare',
  'proxybase',
  'myst',
  'gaganode',
  'apphub',
  'grass-node',
  'wipter',
  'bringyour-provider',
  'titan-edge',
  'antgain*',
  'speedshare',
  'fleetshare',
];

/** §6.1 container images: matched as substrings of the command line (`docker run <image>`). */
export const PROXYWARE_IMAGES: readonly string[] = [
  'fazalfarhan01/earnapp',
  'honeygain/honeygain',
  'iproyal/pawns-cli',
  'packetstream/psclient',
  'traffmonetizer/cli',
  'repocket/repocket',
  'earnfm/earnfm-client',
  'proxyrack/pop',
  'proxylite/proxyservice',
  'bitping/bitpingd',
  'packetshare/packetshare',
  'proxybase/proxybase',
  'techroy23/docker-wipter',
  'mysteriumnetwork/myst',
  'peer2profit/peer2profit',
  'enwaiax/peer2profit',
  'mrcolorrain/peer2profit',
  'mrcolorrain/grass-node',
  'earnfm/fleetshare',
  'pinors/antgain-cli',
  'wizardgain/worker',
  'nezha123/titan-edge',
  'bringyour/community-provider',
];

/** §6.1 provider / control domains (registrable names; subdomains match). */
export const PROXYWARE_DOMAINS: readonly string[] = [
  'peer2profit.com',
  'earnapp.com',
  'honeygain.com',
  'honeygain.me',
  'pawns.app',
  'iproyal.com',
  'packetstream.io',
  'traffmonetizer.com',
  'repocket.co',
  'repocket.com',
  'earn.fm',
  'proxyrack.com',
  'proxylite.ru',
  'bitping.com',
  'packetshare.io',
  'mystnodes.com',
  'mystnodes.co',
  'gaganode.com',
  'getgrass.io',
  'wipter.com',
  'proxybase.org',
  'titannet.io',
  'ebesucher.com',
  'adnade.net',
];

/** §6.2 scanners and proxy-chaining tools: block unless the source is an expected scanner. */
export const SCANNER_TOOLS: readonly string[] = [
  'nmap',
  'nping',
  'zenmap',
  'zennmap',
  'masscan',
  'zmap',
  'zgrab',
  'zgrab2',
  'naabu',
  'hping',
  'hping2',
  'hping3',
  'autorecon',
  'proxychains*',
  '3proxy',
];

/** §6.2 dual-use network utilities: flagged, never blocked alone (D2: deny only with D3). */
export const NETWORK_UTILITIES: readonly string[] = ['nc', 'ncat', 'netcat', 'nc.openbsd', 'nc.traditional', 'socat', 'telnet'];

/** §6.3 tunnel / relay tools: a connection from one of these is the tunnel itself. */
export const TUNNEL_TOOLS: readonly string[] = [
  'chisel',
  'frp',
  'frpc',
  'ngrok',
  'gost',
  'wstunnel',
  'iodine',
  'dnscat',
  'dnscat2',
  'ptunnel-ng',
  'earthworm',
  'ew',
  'tor',
  'nglite',
  'sshuttle',
  'pivotnacci',
  'ssf',
  'hans',
];

/** §6.3 bulk transfer tools: block with a file-sharing / tunnel destination, flag otherwise. */
export const EXFIL_TOOLS: readonly string[] = [
  'rclone',
  'megacmd',
  'megasync',
  'megatools',
  'megaput',
  'mega-*',
  'restic',
  'azcopy',
  'gsutil',
  'scp',
  'sftp',
  'ftp',
  'rsync',
];

/** §6.4 file-sharing, paste, cloud-storage and tunnel destinations (bulk-upload's storage budget). */
export const STORAGE_DOMAINS: readonly string[] = [
  '0x0.st',
  'anonfiles.com',
  'bashupload.com',
  'cdn.discordapp.com',
  'chunk.io',
  'ddns.net',
  'dropboxusercontent.com',
  'dropboxapi.com',
  'dropbox.com',
  'ghostbin.co',
  'github.com',
  'githubusercontent.com',
  'glitch.me',
  'gofile.io',
  'hastebin.com',
  'mediafire.com',
  'mega.co.nz',
  'mega.nz',
  'mega.io',
  'onrender.com',
  'pages.dev',
  'paste.ee',
  'pastebin.com',
  'pastebin.pl',
  'pastetext.net',
  'pixeldrain.com',
  'privatlab.com',
  'privatlab.net',
  'send.exploit.in',
  'sendspace.com',
  'storage.googleapis.com',
  'storjshare.io',
  'supabase.co',
  'temp.sh',
  'transfer.sh',
  'trycloudflare.com',
  'ufile.io',
  'w3spaces.com',
  'workers.dev',
  'x0.at',
  'file.io',
  'filebin.net',
  'send.firefox.com',
  'uploadfiles.io',
  'wetransfer.com',
  'box.com',
  'drive.google.com',
  'api.onedrive.com',
  'onedrive.live.com',
  '1drv.com',
  'ngrok.io',
  'ngrok.com',
  'ngrok-free.app',
  'serveo.net',
  'localtunnel.me',
  'pagekite.me',
  'localxpose.io',
  'api.telegram.org',
  'discord.com',
  'slack-files.com',
  'ipfs.io',
  'top4top.io',
];

/** Tunnel endpoints among the storage domains (an exfil tool to these is a tunnel, not a transfer). */
export const TUNNEL_DOMAINS: readonly string[] = [
  'ngrok.io',
  'ngrok.com',
  'ngrok-free.app',
  'trycloudflare.com',
  'serveo.net',
  'localtunnel.me',
  'pagekite.me',
  'localxpose.io',
];

export interface DetectionLists {
  readonly proxyware: readonly string[];
  readonly proxywareImages: readonly string[];
  readonly proxywareDomains: readonly string[];
  readonly scannerTools: readonly string[];
  readonly networkUtilities: readonly string[];
  readonly tunnelTools: readonly string[];
  readonly exfilTools: readonly string[];
  readonly storageDomains: readonly string[];
  readonly tunnelDomains: readonly string[];
}

/** The built-in lists with the config's `detection.lists` additions appended. */
export function detectionLists(config: Config): DetectionLists {
  const extra = config.detection.lists;
  return {
    proxyware: [...PROXYWARE_NAMES, ...(extra.proxyware ?? [])],
    proxywareImages: PROXYWARE_IMAGES,
    proxywareDomains: [...PROXYWARE_DOMAINS, ...(extra.proxywareDomains ?? [])],
    scannerTools: [...SCANNER_TOOLS, ...(extra.scannerTools ?? [])],
    networkUtilities: NETWORK_UTILITIES,
    tunnelTools: TUNNEL_TOOLS,
    exfilTools: [...EXFIL_TOOLS, ...(extra.exfilTools ?? [])],
    storageDomains: [...STORAGE_DOMAINS, ...(extra.storageDomains ?? [])],
    tunnelDomains: TUNNEL_DOMAINS,
  };
}
