// Webhook signature verification, written in Go: a request goes on only
// if it carries an HMAC-SHA256 of its body under a shared secret, as
// GitHub (X-Hub-Signature-256: sha256=<hex>) and many others send it.
// Several secrets may be listed, so a secret can be rotated without
// refusing deliveries signed with the old one.
//
//	config = { secrets = ["s3cret"], header = "x-hub-signature-256", prefix = "sha256=" }
//
// The route must give it the body (`body = true`).
package export_sluice_filter_http_filter

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
	. "wit_component/sluice_filter_http_filter"
	"wit_component/sluice_filter_log"
	"wit_component/sluice_filter_types"
)

type config struct {
	Secrets []string `json:"secrets"`
	Header  string   `json:"header"`
	Prefix  string   `json:"prefix"`
}

var policy config

func Init(text string) witTypes.Result[witTypes.Unit, string] {
	policy = config{Header: "x-hub-signature-256", Prefix: "sha256="}
	decoder := json.NewDecoder(strings.NewReader(text))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(&policy); err != nil {
		return witTypes.Err[witTypes.Unit](fmt.Sprintf("webhook-signature: %v", err))
	}
	if len(policy.Secrets) == 0 {
		return witTypes.Err[witTypes.Unit]("webhook-signature: `secrets` must list at least one secret")
	}
	return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
}

func OnRequest(req *sluice_filter_types.Request) Verdict {
	// A borrowed handle must be given back before the call returns (the
	// Go bindings leave that to the filter).
	defer req.Drop()
	headers := req.Headers()
	signature := headers.Get(policy.Header)
	headers.Drop()
	if signature.IsNone() {
		return refuse(fmt.Sprintf("the %s header is required", policy.Header))
	}
	given, err := hex.DecodeString(strings.TrimPrefix(signature.Some(), policy.Prefix))
	if err != nil || !strings.HasPrefix(signature.Some(), policy.Prefix) {
		return refuse("the signature is malformed")
	}
	body := req.Body()
	if body.IsErr() {
		sluice_filter_log.Write(sluice_filter_log.LevelError,
			"webhook-signature: no body to check; set body = true on the route")
		return refuse("the body could not be checked")
	}
	for _, secret := range policy.Secrets {
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write(body.Ok())
		if hmac.Equal(mac.Sum(nil), given) {
			return MakeVerdictForward()
		}
	}
	return refuse("the signature does not match the body")
}

func OnResponse(req *sluice_filter_types.Request, resp *sluice_filter_types.Response) sluice_filter_types.ResponsePhase {
	defer req.Drop()
	defer resp.Drop()
	// Tells the host not to call it on responses.
	return sluice_filter_types.ResponsePhaseUnused
}

func refuse(why string) Verdict {
	body, _ := json.Marshal(map[string]string{"error": "invalid_signature", "detail": why})
	return MakeVerdictRespond(sluice_filter_types.Reply{
		Status:  401,
		Headers: []witTypes.Tuple2[string, string]{{F0: "content-type", F1: "application/json"}},
		Body:    body,
	})
}
