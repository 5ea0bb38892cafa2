// The one error type the client rejects and reports with.

export class PgWsError extends Error {
  /**
   * @param {string} code  the server's code (`forbidden`, `too_big`, …) or the
   *   client's own (`disconnected`, `queue_full`, …)
   * @param {string} message
   * @param {{closeCode?: number}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "PgWsError";
    this.code = code;
    if (extra.closeCode !== undefined) this.closeCode = extra.closeCode;
  }
}
