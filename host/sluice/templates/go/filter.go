// {{name}}: a Sluice filter. It refuses requests without the configured
// header (400) and lets the others through. Replace it with your policy.
// build.sh generates the bindings it imports from wit/ and builds it as
// package export_sluice_filter_http_filter.
package export_sluice_filter_http_filter

import (
	"encoding/json"
	"fmt"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
	. "wit_component/sluice_filter_http_filter"
	"wit_component/sluice_filter_types"
)

var header string

func Init(config string) witTypes.Result[witTypes.Unit, string] {
	var parsed struct {
		Header string `json:"header"`
	}
	if err := json.Unmarshal([]byte(config), &parsed); err != nil || parsed.Header == "" {
		return witTypes.Err[witTypes.Unit]("{{name}}: a `header` is needed")
	}
	header = parsed.Header
	return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
}

func OnRequest(req *sluice_filter_types.Request) Verdict {
	// A borrowed handle must be given back before the call returns (the
	// Go bindings leave that to the filter).
	defer req.Drop()
	headers := req.Headers()
	defer headers.Drop()
	if headers.Has(header) {
		return MakeVerdictForward()
	}
	return MakeVerdictRespond(sluice_filter_types.Reply{
		Status:  400,
		Headers: []witTypes.Tuple2[string, string]{{F0: "content-type", F1: "text/plain"}},
		Body:    []byte(fmt.Sprintf("the %s header is required\n", header)),
	})
}

func OnResponse(req *sluice_filter_types.Request, resp *sluice_filter_types.Response) sluice_filter_types.ResponsePhase {
	defer req.Drop()
	defer resp.Drop()
	// Tells the host not to call it on responses.
	return sluice_filter_types.ResponsePhaseUnused
}
