// README's ww.register snippet with @wecom/jssdk, against the live service and a WeCom client that
// verifies each signature with the sandbox. The snippet is read from README.md, so the two cannot drift.
import assert from 'node:assert/strict';

import {
  AGENT_ID, CORP_ID, OLD_WECOM_ANDROID, README, SERVICE, WECOM_IOS, WECOM_JSSDK, WeComClient, openPage, test, until,
} from './harness.mjs';

const IMPORT = "import * as ww from '@wecom/jssdk'\n";

/** The snippet between README's markers, for this service and the test app; `edit` may change it further. */
function snippet(edit = (code) => code) {
  const found = /<!-- ww\.register snippet -->\n```js\n([\s\S]*?)```\n<!-- \/ww\.register snippet -->/.exec(README);
  assert.ok(found, 'README.md has no ww.register snippet between its markers');
  let code = found[1];
  assert.ok(code.startsWith(IMPORT), `the snippet starts with ${IMPORT}`);
  // On the page `ww` is the global of the SDK's <script> build: the same module.
  code = code.slice(IMPORT.length);
  for (const [name, value] of [['service', SERVICE], ['corpId', CORP_ID], ['agentId', AGENT_ID]]) {
    const declaration = new RegExp(`^const ${name} = '[^']*'$`, 'm');
    assert.match(code, declaration, `the snippet declares ${name}`);
    code = code.replace(declaration, `const ${name} = ${JSON.stringify(value)}`);
  }
  return edit(code);
}

/** A page at `href` in WeCom running the SDK and the snippet; `ww` is the page's SDK. */
function registered({ href = 'https://example.com/wecom/report?q=1#summary', userAgent, edit }) {
  const page = openPage({ href, userAgent });
  const client = new WeComClient(page);
  page.run(WECOM_JSSDK, '@wecom/jssdk/dist/wecom.global.prod.js');
  page.run(snippet(edit), 'README.md#ww.register');
  return { page, client, ww: page.window.ww };
}

const signed = (page) => page.requests.map((request) => new URL(request.url)).map((url) =>
  [url.pathname, url.searchParams.get('app'), url.searchParams.get('url')]);

test('WeCom 3.1.0: only getAgentConfigSignature is asked (/v1/agent-signature), and the client accepts its agentConfig', async () => {
  const { page, client, ww } = registered({ userAgent: WECOM_IOS });
  const { result } = await ww.ensureConfigReady();
  assert.equal(result.errMsg, 'agentConfig:ok');
  assert.deepEqual(signed(page), [['/v1/agent-signature', `${CORP_ID}:${AGENT_ID}`, 'https://example.com/wecom/report?q=1']]);
  const [agent] = client.called('agentConfig');
  assert.deepEqual([agent.errMsg, agent.signedWith, agent.params.corpid, agent.params.agentid],
                   ['agentConfig:ok', 'agent', CORP_ID, AGENT_ID]);
  assert.deepEqual(client.called('preVerifyJSAPI'), []);
  assert.deepEqual(page.console, []);
  // The app's identity alone lets the page share: ww sends the agentConfig's signature along.
  ww.onMenuShareWechat({ title: 'Report', desc: 'Q3', link: 'https://example.com/wecom/report', imgUrl: 'https://example.com/r.png' });
  await ww.ensureConfigReady();
  await until(() => client.listeners.has('menu:share:wechat'), 'the share listener');
  assert.deepEqual(await client.tap('menu:share:wechat'), {
    errMsg: 'shareWechat:ok',
    shared: { title: 'Report', desc: 'Q3', link: 'https://example.com/wecom/report', img_url: 'https://example.com/r.png' },
  });
});

test('WeCom 3.0.10: getConfigSignature (/v1/signature) and getAgentConfigSignature (/v1/agent-signature), config accepted before agentConfig', async () => {
  const { page, client, ww } = registered({ userAgent: OLD_WECOM_ANDROID });
  const { result } = await ww.ensureConfigReady();
  assert.equal(result.errMsg, 'agentConfig:ok');
  assert.deepEqual(signed(page).sort(), [['/v1/agent-signature', `${CORP_ID}:${AGENT_ID}`, 'https://example.com/wecom/report?q=1'],
                                         ['/v1/signature', `${CORP_ID}:${AGENT_ID}`, 'https://example.com/wecom/report?q=1']]);
  const [config] = client.called('preVerifyJSAPI');
  const [agent] = client.called('agentConfig');
  assert.deepEqual([config.errMsg, config.params.verifyAppId], ['config:ok', CORP_ID]);
  assert.deepEqual([agent.errMsg, agent.signedWith], ['agentConfig:ok', 'agent']);
  assert.ok(agent.started > config.finished, 'agentConfig waited for config');
});

/**
 * Runs `body` while the rejections `expected(reason)` accepts are kept in `seen` instead of failing the
 * run: ww.register starts the configs itself and leaves their promise unhandled, so a refused one is
 * an unhandled rejection (in a browser, "Uncaught (in promise)" in the console) besides the callbacks.
 */
async function keepingUnhandled(expected, body) {
  const seen = [];
  const runner = process.listeners('unhandledRejection');
  process.removeAllListeners('unhandledRejection');
  process.on('unhandledRejection', (reason, promise) => {
    if (expected(reason)) seen.push(reason);
    else runner.forEach((listener) => listener(reason, promise));
  });
  try {
    await body();
    await new Promise((resolve) => setTimeout(resolve, 20));
  } finally {
    process.removeAllListeners('unhandledRejection');
    runner.forEach((listener) => process.on('unhandledRejection', listener));
  }
  return seen;
}

test('the wrong ticket: getAgentConfigSignature answered from /v1/signature (the corp ticket) is refused', async () => {
  const edit = (code) => {
    const wrong = code.replace("signature('/v1/agent-signature')", "signature('/v1/signature')");
    assert.notEqual(wrong, code);
    return wrong;
  };
  const refused = (reason) => reason && reason.errMsg === 'agentConfig:invalid signature';
  const unhandled = await keepingUnhandled(refused, async () => {
    const { page, client, ww } = registered({ userAgent: WECOM_IOS, edit });
    const error = await ww.ensureConfigReady().then(() => assert.fail('the client accepted it'), (e) => e);
    assert.deepEqual([error.errMsg, error.errCode], ['agentConfig:invalid signature', 40093]);
    const [agent] = client.called('agentConfig');
    assert.equal(agent.signedWith, 'corp');
    assert.deepEqual(page.console, [['warn', 'wx.agentConfig failed', 'agentConfig:invalid signature']]);
  });
  assert.equal(unhandled.length, 1);
});
