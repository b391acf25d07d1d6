<#
.SYNOPSIS
  egressgate Windows agent: reports which process owns each connection to the egress gateway
  (POST /v1/agents/reports, SPEC section 7). Windows PowerShell 5.1 or PowerShell 7.

.DESCRIPTION
  Every -IntervalSec seconds: Get-NetTCPConnection for live connections whose remote end is the
  gateway, Win32_Process for their owners and parents, GetOwner() for the user; posts only the
  connections not reported before, in batches of at most 500, with exponential backoff on failure.
  Run it as SYSTEM (a scheduled task) so the owners of every user's processes are visible.
  The same join is implemented (and tested on fixtures) in agent/windows.ts.

.EXAMPLE
  # One pass, e.g. from a scheduled task every minute:
  powershell.exe -NoProfile -ExecutionPolicy Bypass -File egressgate-agent.ps1 -Gateway http://10.0.0.5:9180 -TokenFile C:\ProgramData\egressgate\agent.token -Once
#>
[CmdletBinding()]
param(
  [Parameter(Mandatory = $true)][string]$Gateway,
  [string]$Token = $env:EGRESSGATE_AGENT_TOKEN,
  [string]$TokenFile,
  [string[]]$GatewayAddress,
  [int[]]$GatewayPorts = @(3128, 1080),
  [string]$HostName = $env:COMPUTERNAME,
  [ValidateRange(1, 3600)][int]$IntervalSec = 5,
  [switch]$Once
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3

if ($TokenFile) { $Token = (Get-Content -Raw -LiteralPath $TokenFile).Trim() }
if (-not $Token) { Write-Error 'egressgate-agent: -Token, -TokenFile or EGRESSGATE_AGENT_TOKEN is required'; exit 2 }
$uri = [Uri]::new([Uri]$Gateway, '/v1/agents/reports')
$NoLoginSession = [uint32]4294967295

function Normalize-Ip([string]$ip) {
  $ip = ($ip -split '%')[0]
  if ($ip -match '^::ffff:(\d+\.\d+\.\d+\.\d+)$') { return $Matches[1] }
  return ([System.Net.IPAddress]::Parse($ip)).ToString()
}

function Get-GatewayIps {
  $names = if ($GatewayAddress) { $GatewayAddress } else { @(([Uri]$Gateway).Host.Trim('[', ']')) }
  $ips = @{}
  foreach ($n in $names) {
    $parsed = $null
    if ([System.Net.IPAddress]::TryParse($n, [ref]$parsed)) { $ips[(Normalize-Ip $n)] = $true; continue }
    try { foreach ($a in [System.Net.Dns]::GetHostAddresses($n)) { $ips[(Normalize-Ip $a.ToString())] = $true } }
    catch { Write-Warning "egressgate-agent: cannot resolve $n : $_" }
  }
  return $ips
}

function Get-Owner($proc) {
  try {
    $o = Invoke-CimMethod -InputObject $proc -MethodName GetOwner -ErrorAction Stop
    if ($o.ReturnValue -eq 0 -and $o.User) { if ($o.Domain) { return "$($o.Domain)\$($o.User)" } else { return $o.User } }
  } catch { }
  return $null
}

function Get-LoginUid([string]$user) {
  # Windows has no audit loginuid: the built-in service accounts are never a login session.
  if ($user -match '^(NT AUTHORITY\\)?(SYSTEM|LOCAL SERVICE|NETWORK SERVICE)$') { return $NoLoginSession }
  return $null
}

$seen = @{}
$pending = New-Object System.Collections.ArrayList
$failures = 0
$nextSend = [DateTime]::MinValue
$gwIps = Get-GatewayIps
$gwResolvedAt = Get-Date

while ($true) {
  if (((Get-Date) - $gwResolvedAt).TotalSeconds -gt 60) { $new = Get-GatewayIps; if ($new.Count -gt 0) { $gwIps = $new }; $gwResolvedAt = Get-Date }

  # 1. Live connections to the gateway.
  $conns = @(Get-NetTCPConnection -RemotePort $GatewayPorts -ErrorAction SilentlyContinue |
      Where-Object { ($_.State -eq 'Established' -or $_.State -eq 'SynSent') -and $gwIps.ContainsKey((Normalize-Ip $_.RemoteAddress)) })
  $live = @{}
  $fresh = @()
  foreach ($c in $conns) {
    $key = '{0}|{1}|{2}|{3}|{4}' -f $c.LocalAddress, $c.LocalPort, $c.RemoteAddress, $c.RemotePort, $c.OwningProcess
    $live[$key] = $true
    if (-not $seen.ContainsKey($key)) { $fresh += , @($key, $c) }
  }
  foreach ($k in @($seen.Keys)) { if (-not $live.ContainsKey($k)) { $seen.Remove($k) } }

  # 2. Their processes and parents (one CIM query per pass, only when something is new).
  if ($fresh.Count -gt 0) {
    $procs = @{}
    foreach ($p in Get-CimInstance Win32_Process) { $procs[[uint32]$p.ProcessId] = $p }
    foreach ($f in $fresh) {
      $key = $f[0]; $c = $f[1]
      $p = $procs[[uint32]$c.OwningProcess]
      $seen[$key] = $true
      if (-not $p -or [uint32]$c.OwningProcess -eq 0) { continue }   # exited between the two queries; pid 0 (Idle) is nobody
      $parent = $procs[[uint32]$p.ParentProcessId]
      # PIDs are reused and never re-parented: a parent younger than its child is a stranger.
      if ($parent -and $parent.CreationDate -and $p.CreationDate -and $parent.CreationDate -gt $p.CreationDate) { $parent = $null }
      $user = Get-Owner $p
      [void]$pending.Add([ordered]@{
          proto      = 'tcp'
          localIp    = Normalize-Ip $c.LocalAddress
          localPort  = [int]$c.LocalPort
          remoteIp   = Normalize-Ip $c.RemoteAddress
          remotePort = [int]$c.RemotePort
          pid        = [int64]$p.ProcessId
          ppid       = if ($null -ne $p.ParentProcessId) { [int64]$p.ParentProcessId } else { $null }
          name       = [string]$p.Name
          exe        = $p.ExecutablePath
          cmdline    = $p.CommandLine
          user       = $user
          uid        = $null
          loginuid   = Get-LoginUid $user
          parentName = if ($parent) { [string]$parent.Name } else { $null }
          parentExe  = if ($parent) { $parent.ExecutablePath } else { $null }
          startedAt  = if ($p.CreationDate) { $p.CreationDate.ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ss.fffZ') } else { $null }
        })
    }
    if ($pending.Count -gt 20000) { $pending.RemoveRange(0, $pending.Count - 20000) }
  }

  # 3. Send in batches; keep them on failure and back off (with jitter) up to a minute.
  while ($pending.Count -gt 0 -and (Get-Date) -ge $nextSend) {
    $n = [Math]::Min(500, $pending.Count)
    $body = ConvertTo-Json -InputObject ([ordered]@{ host = $HostName; reports = @($pending.GetRange(0, $n)) }) -Depth 4 -Compress
    try {
      Invoke-RestMethod -Method Post -Uri $uri -Headers @{ Authorization = "Bearer $Token" } -ContentType 'application/json' -Body ([Text.Encoding]::UTF8.GetBytes($body)) -TimeoutSec 10 | Out-Null
      $pending.RemoveRange(0, $n); $failures = 0
    } catch {
      $status = 0
      $resp = $_.Exception.PSObject.Properties['Response']
      if ($resp -and $resp.Value) { $status = [int]$resp.Value.StatusCode }
      if ($status -ge 400 -and $status -lt 500 -and $status -ne 408 -and $status -ne 429) {
        Write-Warning "egressgate-agent: gateway refused $n reports (HTTP $status); dropped"
        $pending.RemoveRange(0, $n)
      } else {
        $failures++
        $delay = [Math]::Min(60, $IntervalSec * [Math]::Pow(2, [Math]::Min($failures - 1, 10))) * (0.5 + (Get-Random -Maximum 0.5))
        $nextSend = (Get-Date).AddSeconds($delay)
        Write-Warning "egressgate-agent: report failed ($status $($_.Exception.Message)); retry in $([int]$delay)s, $($pending.Count) queued"
        if ($Once -and $failures -ge 4) { exit 1 }
        if ($Once) { Start-Sleep -Milliseconds ([int]($delay * 1000)) }
      }
    }
  }

  if ($Once) { if ($pending.Count -eq 0) { exit 0 } else { continue } }
  Start-Sleep -Seconds $IntervalSec
}
