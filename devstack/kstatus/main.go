// Command rolegate-kstatus prints the kstatus of one Kubernetes object: what Flux, the
// cli-utils applier and kpt compute to decide whether a rollout is done.
//
// It reads the object as JSON on stdin (e.g. `kubectl get llmrole x -o json`) and prints
// {"status": "InProgress|Current|Failed|Terminating|NotFound|Unknown", "message": "..."} on
// stdout, from sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute. Its rules for a custom
// resource: https://github.com/kubernetes-sigs/cli-utils/blob/master/pkg/kstatus/README.md
// (status.observedGeneration must equal metadata.generation; then the Reconciling, Stalled
// and Ready conditions decide). Exit status 2: the input is not an object; 1: Compute failed.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading stdin:", err)
		os.Exit(2)
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(raw); err != nil {
		fmt.Fprintln(os.Stderr, "not a Kubernetes object:", err)
		os.Exit(2)
	}
	result, err := status.Compute(obj)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
	out, err := json.Marshal(map[string]string{
		"status":  result.Status.String(),
		"message": result.Message,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}
