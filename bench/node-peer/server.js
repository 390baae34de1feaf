'use strict';
// The Node peer of `bench/bench_signature.py --against node`: wechat-jssdk 5.1.0 (JasonBoy/wechat-jssdk)
// behind node's own http module, the way its README wires it: `new Wechat(config)` with the default
// FileStore, and `wx.jssdk.getSignature(url)` per request.
//
//   NODE_PEER_PORT=8080 NODE_PEER_WECHAT_BASE=http://127.0.0.1:PORT NODE_PEER_STORE_DIR=/tmp/dir \
//   NODE_PEER_APP_ID=wx... NODE_PEER_APP_SECRET=... node server.js
//
// NODE_PEER_WECHAT_BASE is a WeChat API base (the jssdk-service sandbox): wechat-jssdk hands
// `accessTokenUrl` and `ticketUrl` to got 9 with a `query` option, so it calls
// `${accessTokenUrl}?grant_type=client_credential&appid=..&secret=..` and
// `${ticketUrl}?access_token=..&type=jsapi`.
//
// GET /v1/signature?url=<percent-encoded page URL> answers what getSignature resolves to:
// {appId, timestamp, nonceStr, signature, url}. getSignature signs the string it is given (it only
// cuts a #fragment), so the query parameter is decoded first. Note that wechat-jssdk keeps one
// signature per URL in its store for 1 h 59 min: a warm request for a known URL is a lookup, not a
// new nonce and SHA-1 (jssdk-service signs every request afresh). NODE_PEER_FRESH=1 passes
// forceNewSignature, so every request is signed anew (and saved to the store) as the service does.
// GET /readyz answers 200 once the token and ticket are in the store, 503 before.

const http = require('http');
const path = require('path');
const { Wechat } = require('wechat-jssdk');

const env = process.env;
const base = env.NODE_PEER_WECHAT_BASE.replace(/\/+$/, '');
const wx = new Wechat({
  appId: env.NODE_PEER_APP_ID,
  appSecret: env.NODE_PEER_APP_SECRET,
  accessTokenUrl: `${base}/cgi-bin/token`,
  ticketUrl: `${base}/cgi-bin/ticket/getticket`,
  storeOptions: { fileStorePath: path.join(env.NODE_PEER_STORE_DIR, 'wechat-info.json') },
});

const JSON_HEADERS = { 'Content-Type': 'application/json; charset=utf-8', 'Cache-Control': 'no-store' };
const fresh = env.NODE_PEER_FRESH === '1';
let ready = false;

function answer(res, status, body) {
  res.writeHead(status, JSON_HEADERS);
  res.end(JSON.stringify(body));
}

const server = http.createServer((req, res) => {
  const query = req.url.indexOf('?');
  const pathname = query < 0 ? req.url : req.url.slice(0, query);
  if (pathname === '/readyz') {
    answer(res, ready ? 200 : 503, { status: ready ? 'ready' : 'unready' });
    return;
  }
  if (pathname !== '/v1/signature' || req.method !== 'GET') {
    answer(res, 404, { error: { code: 'not_found', message: 'GET /v1/signature?url=...' } });
    return;
  }
  const page = new URLSearchParams(query < 0 ? '' : req.url.slice(query + 1)).get('url');
  if (!page) {
    answer(res, 400, { error: { code: 'invalid_url', message: 'url is required' } });
    return;
  }
  wx.jssdk.getSignature(page, fresh).then(
    signature => answer(res, 200, signature),
    reason => answer(res, 503, { error: { code: 'upstream', message: String(reason && (reason.errmsg || reason.message || reason)) } })
  );
});

wx.jssdk.prepareGlobalToken().then(
  () => {
    ready = true;
  },
  reason => {
    console.error('wechat-jssdk could not get a token and ticket:', reason);
    process.exit(1);
  }
);

server.listen(Number(env.NODE_PEER_PORT), '127.0.0.1');
for (const name of ['SIGTERM', 'SIGINT']) {
  process.on(name, () => process.exit(0));
}
