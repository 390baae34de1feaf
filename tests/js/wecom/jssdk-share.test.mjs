// The page helper (/v1/jssdk-share.js) in WeCom, with jweixin (weixin-js-sdk) and a WeCom client that
// verifies each signature with the sandbox.
import assert from 'node:assert/strict';

import {
  AGENT_ID, APP, CORP_ID, HELPER, OLD_WECOM_ANDROID, SERVICE, WECOM_IOS, WeComClient, openPage, test, until,
} from './harness.mjs';

const WECOM_SHARE_APIS = ['onMenuShareAppMessage', 'onMenuShareWechat', 'onMenuShareTimeline'];

/** A page at `href` in WeCom: the client's bridge, jweixin, then the helper, as a page loads them. */
function weComPage({ href, userAgent, answer, inject }) {
  const page = openPage({ href, userAgent, answer });
  const client = new WeComClient(page, { inject });
  page.loadJweixin();
  page.run(HELPER, 'jssdk-share.js');
  return { page, client, JssdkShare: page.window.JssdkShare };
}

/** What the client's share JSAPIs carry for a payload of /v1/share. */
const sharedAs = ({ title, desc, link, imgUrl }) => ({ title, desc, link, img_url: imgUrl });

for (const [client, userAgent, alone] of [['WeCom 3.1.0 on iOS', WECOM_IOS, true],
                                          ['WeCom 3.0.10 on Android', OLD_WECOM_ANDROID, false]]) {
  test(`${client}: wx.config then wx.agentConfig ${alone ? 'at once' : 'after wx.ready'}, both verified, and the three share menus set`, async () => {
    const { page, client: wecom, JssdkShare } = weComPage({ href: 'https://example.com/wecom/notice?id=3#top', userAgent });
    const answer = await JssdkShare.init({ endpoint: SERVICE, app: APP, share: { title: 'Notice 3' } });
    assert.deepEqual(page.sent('/v1/share').map((r) => r.body),
                     [{ url: 'https://example.com/wecom/notice?id=3', share: { title: 'Notice 3' }, app: APP }]);
    const [config] = wecom.called('preVerifyJSAPI');
    const [agent] = wecom.called('agentConfig');
    assert.equal(config.errMsg, 'config:ok');
    assert.equal(config.params.verifyAppId, CORP_ID);
    assert.equal(config.params.verifySignature, answer.config.signature);
    assert.equal(agent.errMsg, 'agentConfig:ok');
    assert.equal(agent.signedWith, 'agent');
    assert.deepEqual([agent.params.corpid, agent.params.agentid, agent.params.signature],
                     [CORP_ID, AGENT_ID, answer.agentConfig.signature]);
    assert.deepEqual(agent.params.jsApiList, WECOM_SHARE_APIS);
    // From 3.0.24 on the helper does not wait for config; before it, agentConfig follows config's success.
    assert.equal(agent.started < config.finished, alone);
    assert.deepEqual((await wecom.tap('menu:share:appmessage')).shared, sharedAs(answer.appMessage));
    assert.deepEqual((await wecom.tap('menu:share:wechat')).shared, sharedAs(answer.wechat));
    assert.deepEqual(await wecom.tap('menu:share:timeline'),
                     { errMsg: 'shareTimeline:ok', shared: { ...sharedAs(answer.timeline), desc: answer.timeline.title } });
    assert.equal(answer.appMessage.title, 'Notice 3');
    assert.equal(answer.wechat.link, 'https://example.com/wecom/notice?id=3');
    assert.deepEqual(page.sent('/v1/report'), []);
  });
}

test('WeCom on iOS signs the current URL after a route change, where iOS WeChat signs the landing URL', async () => {
  const { page, client, JssdkShare } = weComPage({ href: 'https://example.com/app/', userAgent: WECOM_IOS });
  page.pushState('https://example.com/app/orders/42');
  const answer = await JssdkShare.init({ endpoint: SERVICE, app: APP });
  assert.deepEqual(page.sent('/v1/share').map((r) => r.body), [{ url: 'https://example.com/app/orders/42', share: {}, app: APP }]);
  assert.deepEqual(client.called('preVerifyJSAPI').map((call) => call.errMsg), ['config:ok']);
  assert.equal((await client.tap('menu:share:wechat')).shared.link, 'https://example.com/app/orders/42');
  assert.equal(answer.agentConfig.corpid, CORP_ID);
});

test('a bridge that arrives after the page called wx.config: the early wx.agentConfig waits for WeixinJSBridgeReady', async () => {
  const { page, client, JssdkShare } = weComPage({ href: 'https://example.com/late', userAgent: WECOM_IOS, inject: false });
  const init = JssdkShare.init({ endpoint: SERVICE, app: APP });
  // wx.config with beta defines wx.invoke at once: the helper has configured when it appears.
  await until(() => typeof page.window.wx.invoke === 'function', 'wx.config');
  assert.deepEqual(client.calls, []);
  client.inject();
  await init;
  assert.deepEqual(client.configs(), [['preVerifyJSAPI', 'config:ok'], ['agentConfig', 'agentConfig:ok']]);
});

test('the bridge refuses wx.agentConfig signed with the corp ticket: reported, and init rejects with its errMsg', async () => {
  // A broken server: agentConfig carries the config's corp-ticket signature.
  const answer = (path, body) => (path === '/v1/share'
    ? { ...body, agentConfig: { ...body.agentConfig, nonceStr: body.config.nonceStr, timestamp: body.config.timestamp,
                                signature: body.config.signature } }
    : undefined);
  const { page, client, JssdkShare } = weComPage({ href: 'https://example.com/p?x=1', userAgent: WECOM_IOS, answer });
  const error = await JssdkShare.init({ endpoint: SERVICE, app: APP }).then(() => assert.fail('init resolved'), (e) => e);
  assert.equal(error.errMsg, 'agentConfig:invalid signature');
  assert.equal(error.message, 'agentConfig:invalid signature');
  const [agent] = client.called('agentConfig');
  assert.deepEqual([agent.errCode, agent.signedWith], [40093, 'corp']);
  const reports = page.sent('/v1/report').map((r) => r.body);
  assert.equal(reports.length, 1);
  const { signature, nonceStr, timestamp, ...rest } = reports[0];
  assert.deepEqual({ signature, nonceStr, timestamp }, { signature: agent.params.signature, nonceStr: agent.params.nonceStr,
                                                         timestamp: agent.params.timestamp });
  assert.deepEqual(rest, { url: 'https://example.com/p?x=1', landingUrl: 'https://example.com/p?x=1', appId: CORP_ID,
                           agentId: AGENT_ID, userAgent: WECOM_IOS, errMsg: 'agentConfig:invalid signature' });
  // The service took the report (a refused one leaves findings empty), and named the swap.
  assert.ok(error.findings.some((finding) => finding.code === 'corp_ticket_for_agent_config'), JSON.stringify(error.findings));
});

test('on a client before 3.0.24 a refused wx.config is reported, and wx.agentConfig is never called', async () => {
  const answer = (path, body) => (path === '/v1/share' ? { ...body, config: { ...body.config, signature: '0'.repeat(40) } } : undefined);
  const { page, client, JssdkShare } = weComPage({ href: 'https://example.com/p', userAgent: OLD_WECOM_ANDROID, answer });
  const error = await JssdkShare.init({ endpoint: SERVICE, app: APP }).then(() => assert.fail('init resolved'), (e) => e);
  assert.equal(error.errMsg, 'config:invalid signature');
  await client.settled();
  assert.deepEqual(client.configs(), [['preVerifyJSAPI', 'config:invalid signature']]);
  const [report] = page.sent('/v1/report').map((r) => r.body);
  assert.deepEqual([report.appId, report.signature, report.errMsg], [CORP_ID, '0'.repeat(40), 'config:invalid signature']);
  assert.deepEqual(client.listeners.size, 0);
});

test('in WeCom a wx without invoke and on is refused before any share menu is set', async () => {
  const page = openPage({ href: 'https://example.com/p', userAgent: WECOM_IOS });
  const configs = [];
  page.window.wx = { config: (config) => configs.push(config), ready() {}, error() {} };
  page.run(HELPER, 'jssdk-share.js');
  await assert.rejects(page.window.JssdkShare.init({ endpoint: SERVICE, app: APP }), /needs invoke and on/);
  assert.equal(configs[0].beta, true);
  assert.deepEqual(page.sent('/v1/report'), []);
});
