// OAuth 2.0 token introspection (RFC 7662), written in JavaScript with
// fetch(): a bearer token is sent to the identity provider's introspection
// endpoint, and an active token's subject (and scope, client) become the
// request's identity. The endpoint's host names an upstream from the
// gateway's configuration, which the plugin must be granted
// (`grants = ["http:idp"]` for `http://idp/introspect`).
//
//     config = { url = "http://idp/introspect", client_id = "gateway", client_secret = "…" }
//
// No token: 401. An inactive token: 401. The provider unreachable (or not
// granted): 503, and the request goes no further.

let settings;

export const auth = {
  init(json) {
    const config = JSON.parse(json);
    if (typeof config.url !== 'string') throw 'introspect: `url` (the introspection endpoint) is required';
    settings = { url: config.url, headers: { 'content-type': 'application/x-www-form-urlencoded' } };
    if (config.client_id !== undefined) {
      settings.headers.authorization = 'Basic ' + btoa(`${config.client_id}:${config.client_secret ?? ''}`);
    }
  },

  async authenticate(req) {
    const header = req.headers().get('authorization') ?? '';
    // Auth schemes are case-insensitive (RFC 9110 §11.1).
    const bearer = header.match(/^bearer\s+(.*)$/i);
    const token = bearer ? bearer[1].trim() : '';
    if (token === '') return refuse(401, 'invalid_request', 'a bearer token is required');
    let answer;
    try {
      const response = await fetch(settings.url, {
        method: 'POST',
        headers: settings.headers,
        body: `token=${encodeURIComponent(token)}&token_type_hint=access_token`,
      });
      if (!response.ok) throw new Error(`status ${response.status}`);
      answer = await response.json();
    } catch (e) {
      return refuse(503, 'temporarily_unavailable', `the token could not be checked: ${e}`);
    }
    if (answer.active !== true || typeof answer.sub !== 'string') {
      return refuse(401, 'invalid_token', 'the token is not active');
    }
    const claims = ['scope', 'client_id', 'username']
      .filter((name) => typeof answer[name] === 'string')
      .map((name) => [name, answer[name]]);
    return { tag: 'allow', val: { subject: answer.sub, claims } };
  },
};

function refuse(status, error, description) {
  const headers = [['content-type', 'application/json']];
  if (status === 401) headers.push(['www-authenticate', `Bearer error="${error}"`]);
  const body = new TextEncoder().encode(JSON.stringify({ error, error_description: description }));
  return { tag: 'deny', val: { status, headers, body } };
}
