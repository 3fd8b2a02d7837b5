// Preloaded (node --require) by the compatibility tests. Prisma's wasm schema engine arms a
// 10 s timer (its advisory-lock wait limit) and never clears it, so a finished
// `prisma migrate deploy` idles ~10 s before exiting. Long timers are unref'd: they still
// fire while the CLI is busy, but no longer keep a finished process alive.
'use strict'
const original = global.setTimeout
global.setTimeout = function setTimeoutUnrefLong(fn, ms, ...args) {
  const timer = original(fn, ms, ...args)
  if (typeof ms === 'number' && ms >= 5000 && timer && typeof timer.unref === 'function') timer.unref()
  return timer
}
