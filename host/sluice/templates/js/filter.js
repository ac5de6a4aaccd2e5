// {{name}}: a Sluice filter. It refuses requests without the configured
// header (400) and lets the others through. Replace it with your policy.

let header;

export const httpFilter = {
  init(json) {
    header = JSON.parse(json).header;
    // A thrown string rejects the configuration, with this message.
    if (typeof header !== 'string') throw '{{name}}: a `header` is needed';
  },

  onRequest(req) {
    if (req.headers().has(header)) return { tag: 'forward' };
    const body = new TextEncoder().encode(`the ${header} header is required\n`);
    return { tag: 'respond', val: { status: 400, headers: [['content-type', 'text/plain']], body } };
  },

  onResponse(req, resp) {
    // Tells the host not to call it on responses.
    return 'unused';
  },
};
