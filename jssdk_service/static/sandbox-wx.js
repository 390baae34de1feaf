/*
 * SANDBOX STAND-IN for WeChat's jweixin, served by `jssdk-service serve --sandbox` only.
 *
 * The sandbox's tickets come from the built-in WeChat emulator, so the real WeChat client would
 * refuse every signature made with them, and outside WeChat the real jweixin does nothing. This
 * stand-in lets a newcomer watch the whole flow in any browser, offline: wx.config asks the
 * service's doctor (/v1/doctor) to verify the signature against the URL WeChat would verify (the
 * landing URL in iOS WeChat, the current URL elsewhere), then runs wx.ready or wx.error as WeChat
 * does; the share APIs record what they were given in wx.shared instead of setting a share card.
 * Never use it on a real page.
 */
(function (window) {
  'use strict';

  var document = window.document;
  var script = document && document.currentScript;
  var match = /^(https?:\/\/[^\/?#]+)/i.exec((script && script.src) || '');
  var endpoint = match ? match[1] : '';
  var landingUrl = withoutFragment(String(window.location.href));
  var state = 'idle';
  var readyQueue = [];
  var onError = null;
  var lastError = null;
  var enabled = [];
  var configs = 0;

  function withoutFragment(url) {
    var cut = url.indexOf('#');
    return cut < 0 ? url : url.slice(0, cut);
  }

  function verifiedUrl(userAgent) {
    var ios = /MicroMessenger/i.test(userAgent) && /iPhone|iPad|iPod/.test(userAgent);
    return ios ? landingUrl : withoutFragment(String(window.location.href));
  }

  function settle(result, findings) {
    if (result === 'ready') {
      state = 'ready';
      var queue = readyQueue;
      readyQueue = [];
      for (var i = 0; i < queue.length; i++) queue[i]();
    } else {
      state = 'failed';
      lastError = { errMsg: result, findings: findings };
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
      var userAgent = String((window.navigator && window.navigator.userAgent) || '');
      window.fetch(endpoint + '/v1/doctor', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({
          url: verifiedUrl(userAgent),
          appId: config.appId,
          signature: config.signature,
          nonceStr: config.nonceStr,
          timestamp: config.timestamp,
          userAgent: userAgent
        })
      }).then(function (response) {
        return response.json();
      }).then(function (answer) {
        if (number !== configs) return;
        var findings = answer.findings || [];
        var valid = findings.some(function (finding) { return finding.code === 'signature_valid'; });
        settle(valid ? 'ready' : 'config:invalid signature', findings);
      }, function () {
        if (number === configs) settle('config:fail (the sandbox stand-in could not reach /v1/doctor)', []);
      });
    },
    ready: function (callback) {
      if (state === 'ready') callback();
      else readyQueue.push(callback);
    },
    error: function (callback) {
      onError = callback;
      if (state === 'failed') callback(lastError);
    },
    updateAppMessageShareData: shareApi('updateAppMessageShareData'),
    updateTimelineShareData: shareApi('updateTimelineShareData')
  };
  window.wx = wx;
})(window);
