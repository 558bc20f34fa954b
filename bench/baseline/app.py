# The seed's webhook, second version (Basic-auth-backed), as its blog post ships it.
#
# Adapted for the benchmark only where it has to be:
#  - the Basic-auth URL points at the benchmark's local Basic-auth server
#    (BASIC_AUTH_URL, e.g. http://127.0.0.1:PORT) instead of httpbin.org, with the token's
#    user in the path (/basic-auth/<user>), as our basic_auth source is configured;
#  - host, port and TLS files come from the environment (loopback only), and the Flask
#    server is given ssl_context because kube-apiserver only calls https:// webhooks;
#  - indentation: the post mixes tabs and spaces, which Python 3 refuses (TabError);
#    it is normalised to spaces.
# Everything else (request.json, split(':'), a new requests.get per review, pprint of every
# review to stdout, debug=True, the bare except) is kept, because that is what users run.
import os

from flask import Flask, request, jsonify
import pprint
import requests
from requests.auth import HTTPBasicAuth

BASIC_AUTH_URL = os.environ.get("BASIC_AUTH_URL", "https://httpbin.org")

app = Flask(__name__)


@app.route('/', methods=['POST'])
def auth():
    tokenReview = request.json

    # 인증 결과 (외부 인증)
    tokenReview['status'] = external_auth(tokenReview)
    pprint.pprint(tokenReview)

    # API 서버로 json 응답
    return jsonify(tokenReview)

# 외부 인증 시스템
def external_auth(tokenReview):
    try:
        user, pw = tokenReview['spec']['token'].split(':')
        ret = requests.get(BASIC_AUTH_URL + '/basic-auth/' + user, auth=HTTPBasicAuth(user, pw))

        status = {}
        status['authenticated'] = ret.status_code == 200
        status['user'] = {
            'username': user,
            'uid': user,
            'groups': ['system:masters']
        }
    except:
        status = {}
        status['authenticated'] = False

    return status


if __name__ == '__main__':
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")),
            debug=True, ssl_context=(os.environ["TLS_CERT"], os.environ["TLS_KEY"]))
