/*
 * SANDBOX STAND-INS for jweixin, served by `jssdk-service serve --sandbox` only.
 *
 * The sandbox's tickets come from the built-in emulator, so the real WeChat and WeCom clients would
 * refuse every signature made with them, and outside those clients the real jweixin does nothing.
 * These stand-ins let a newcomer watch the whole flow in any browser, offline:
 *
 * - window.wx, WeChat's: wx.config asks the service's doctor (/v1/doctor) to verify the signature
 *   against the URL WeChat would verify (the landing URL in iOS WeChat, the current URL elsewhere);
 *   updateAppMessageShareData and updateTimelineShareData record what they were given.
 * - window.wxWork, a WeCom client's wx as WeCom's own build of jweixin has it: wx.config (appId =
 *   corp_id, beta: true) and wx.agentConfig are checked by the emulator itself (/demo/verify,
 *   /demo/verify-agent: only a corp ticket signs the first, only the app's agent ticket the second);
 *   onMenuShareAppMessage, onMenuShareWechat and onMenuShareTimeline record what they were given.
 *
 * Each runs wx.ready or wx.error as the client does; `shared` holds each share API's payload
 * instead of a share card. Never use them on a real page.
 */
(function (window) {
  'use strict';

  var document = window.document;
  var script = document && document.currentScript;
  var match = /^(https?:\/\/[^\/?#]+)/i.exec((script && script.src) || '');
  var endpoint = match ? match[1] : '';
  var landingUrl = withoutFragment(String(window.location.href));

  function withoutFragment(url) {
    var cut = url.indexOf('#');
    return cut < 0 ? url : url.slice(0, cut);
  }

  function currentUrl() {
    return withoutFragment(String(window.location.href));
  }

  function userAgent() {
    return String((window.navigator && window.navigator.userAgent) || '');
  }

  function post(path, body) {
    return window.fetch(endpoint + path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body)
    }).then(function (response) { return response.json(); });
  }

  // WeChat: the doctor verifies, with the URL this client verifies; `signature_valid` is "ok".
  function checkWithDoctor(config) {
    var agent = userAgent();
    var ios = /MicroMessenger/i.test(agent) && /iPhone|iPad|iPod/.test(agent);
    return post('/v1/doctor', {
      url: ios ? landingUrl : currentUrl(), appId: config.appId, signature: config.signature,
      nonceStr: config.nonceStr, timestamp: config.timestamp, userAgent: agent
    }).then(function (answer) {
      var findings = answer.findings || [];
      var valid = findings.some(function (finding) { return finding.code === 'signature_valid'; });
      return { ok: valid, errMsg: valid ? 'config:ok' : 'config:invalid signature', findings: findings };
    });
  }

  // WeCom: the emulator verifies, as the WeCom client does, with the current URL.
  function checkWithSandbox(config) {
    return post('/demo/verify', {
      url: currentUrl(), appId: config.appId, signature: config.signature, nonceStr: config.nonceStr,
      timestamp: config.timestamp
    }).then(function (answer) {
      return { ok: answer.errMsg === 'config:ok', errMsg: answer.errMsg, findings: [] };
    });
  }

  function client(check, shareApis) {
    var state = 'idle';
    var readyQueue = [];
    var onError = null;
    var lastError = null;
    var enabled = [];
    var configs = 0;

    function settle(verdict) {
      if (verdict.ok) {
        state = 'ready';
        var queue = readyQueue;
        readyQueue = [];
        for (var i = 0; i < queue.length; i++) queue[i]();
      } else {
        state = 'failed';
        lastError = { errMsg: verdict.errMsg, findings: verdict.findings };
        if (onError) onError(lastError);
      }
    }

    function shareApi(name) {
      return function (payload) {
        if (state !== 'ready' || enabled.indexOf(name) < 0) {
          if (payload.fail) payload.fail({ errMsg: name + ':the permission value is offline verifying' });
          return;
        }
        wx.shared[name] = { title: payload.title, desc: payload.desc, link: payload.link, imgUrl: payload.imgUrl };
        if (payload.success) payload.success({ errMsg: name + ':ok' });
      };
    }

    var wx = {
      sandbox: true,
      shared: {},
      config: function (config) {
        var number = ++configs;
        state = 'verifying';
        enabled = (config.jsApiList || []).slice();
        check(config).then(function (verdict) {
          if (number === configs) settle(verdict);
        }, function () {
          if (number === configs) settle({ ok: false, errMsg: 'config:fail (the sandbox stand-in could not verify it)', findings: [] });
        });
      },
      ready: function (callback) {
        if (state === 'ready') callback();
        else readyQueue.push(callback);
      },
      error: function (callback) {
        onError = callback;
        if (state === 'failed') callback(lastError);
      }
    };
    shareApis.forEach(function (name) { wx[name] = shareApi(name); });
    return wx;
  }

  window.wx = client(checkWithDoctor, ['updateAppMessageShareData', 'updateTimelineShareData']);

  var wxWork = client(checkWithSandbox, ['onMenuShareAppMessage', 'onMenuShareWechat', 'onMenuShareTimeline']);
  wxWork.agentConfig = function (options) {
    post('/demo/verify-agent', {
      url: currentUrl(), corpid: options.corpid, agentid: String(options.agentid), signature: options.signature,
      nonceStr: options.nonceStr, timestamp: options.timestamp
    }).then(function (answer) {
      if (answer.errMsg === 'agentConfig:ok') {
        if (options.success) options.success({ errMsg: answer.errMsg });
      } else if (options.fail) {
        options.fail({ errMsg: answer.errMsg, errCode: answer.errCode, signedWith: answer.signedWith });
      }
    }, function () {
      if (options.fail) options.fail({ errMsg: 'agentConfig:fail (the sandbox stand-in could not verify it)' });
    });
  };
  window.wxWork = wxWork;
})(window);
