// CORS at the edge, written in JavaScript: answers browsers' preflight
// requests itself and adds the CORS headers to the upstream's responses,
// so every service behind the route shares one policy.
//
// A preflight (OPTIONS with Origin and Access-Control-Request-Method) from
// an allowed origin, for an allowed method and headers, gets a 204 with
// the Access-Control-Allow-* headers; any other preflight gets a 403. An
// actual request from an allowed origin goes on, and its response gets
// Access-Control-Allow-Origin (and -Credentials, -Expose-Headers); one
// from another origin goes on untouched, so the browser withholds it.

import { write } from 'sluice:filter/log@0.2.5';

let policy;

function list(config, key, fallback, lower = true) {
  const value = config[key] ?? fallback;
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) {
    throw `cors: \`${key}\` must be a list of strings`;
  }
  return value.map((v) => (lower ? v.toLowerCase() : v));
}

function allowedOrigin(origin) {
  if (policy.origins.includes(origin)) return origin;
  // With credentials, browsers refuse `*`: name the origin instead.
  if (policy.origins.includes('*')) return policy.credentials ? origin : '*';
  return undefined;
}

export const httpFilter = {
  init(json) {
    const config = JSON.parse(json);
    const origins = list(config, 'allow_origins', []);
    if (origins.length === 0) throw 'cors: `allow_origins` must name at least one origin (or "*")';
    policy = {
      origins,
      methods: list(config, 'allow_methods', ['GET', 'HEAD', 'POST']).map((m) => m.toUpperCase()),
      headers: list(config, 'allow_headers', []),
      expose: list(config, 'expose_headers', []),
      credentials: config.allow_credentials === true,
      maxAge: Number.isInteger(config.max_age) ? config.max_age : 600,
    };
  },

  onRequest(req) {
    const headers = req.headers();
    const origin = headers.get('origin');
    const wanted = headers.get('access-control-request-method');
    if (origin === undefined || req.method() !== 'OPTIONS' || wanted === undefined) {
      return { tag: 'forward' };
    }
    const allowed = allowedOrigin(origin);
    const asked = (headers.get('access-control-request-headers') ?? '')
      .split(',')
      .map((h) => h.trim().toLowerCase())
      .filter((h) => h !== '');
    const refused = asked.find((h) => !policy.headers.includes(h));
    if (allowed === undefined || !policy.methods.includes(wanted.toUpperCase()) || refused) {
      write('debug', `cors: preflight refused for ${origin} (${wanted} ${asked.join(',')})`);
      return reply(403, [['vary', 'origin']], 'CORS preflight refused\n');
    }
    const out = [
      ['access-control-allow-origin', allowed],
      ['access-control-allow-methods', policy.methods.join(', ')],
      ['access-control-max-age', String(policy.maxAge)],
      ['vary', 'origin'],
    ];
    if (asked.length > 0) out.push(['access-control-allow-headers', asked.join(', ')]);
    if (policy.credentials) out.push(['access-control-allow-credentials', 'true']);
    return reply(204, out, '');
  },

  onResponse(req, resp) {
    const origin = req.headers().get('origin');
    const allowed = origin === undefined ? undefined : allowedOrigin(origin);
    if (allowed === undefined) return 'used';
    const headers = resp.headers();
    headers.set('access-control-allow-origin', allowed);
    headers.append('vary', 'origin');
    if (policy.credentials) headers.set('access-control-allow-credentials', 'true');
    if (policy.expose.length > 0) headers.set('access-control-expose-headers', policy.expose.join(', '));
    return 'used';
  },
};

function reply(status, headers, body) {
  return { tag: 'respond', val: { status, headers, body: new TextEncoder().encode(body) } };
}
