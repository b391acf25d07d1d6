/** Helpers shared by the Windows parsers (`windows.ts`, `windows-sysmon.ts`). */

/** Not a login session (the Linux `loginuid` sentinel, reused for Windows service contexts). */
export const NO_LOGIN_SESSION = 4294967295;

const SERVICE_ACCOUNTS = /^(NT AUTHORITY\\)?(SYSTEM|LOCAL SERVICE|NETWORK SERVICE)$|^(AUTORITE NT|NT-AUTORITÄT)\\/i;

/** loginuid for a Windows account name: the service accounts are never a login session. */
export function loginuidForWindowsUser(user: string | null): number | null {
  return user !== null && SERVICE_ACCOUNTS.test(user) ? NO_LOGIN_SESSION : null;
}

/** Last path component of a Windows (or POSIX) path. */
export function baseName(path: string): string {
  const i = Math.max(path.lastIndexOf('\\'), path.lastIndexOf('/'));
  return i >= 0 ? path.slice(i + 1) : path;
}

