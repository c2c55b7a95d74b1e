package subjects_test

import (
	"fmt"

	"github.com/rbee/heartbeat/subjects"
)

func ExampleScheme_Worker() {
	s := subjects.Default()
	fmt.Println(s.Worker("gpu-node-1", "llama-0"))
	fmt.Println(s.Hive("gpu-node-1"))
	fmt.Println(s.HiveWorkers("gpu-node-1"))
	fmt.Println(s.All())
	// Output:
	// rbee.hb.worker.gpu-node-1.llama-0
	// rbee.hb.hive.gpu-node-1
	// rbee.hb.worker.gpu-node-1.*
	// rbee.hb.>
}

func ExampleScheme_Parse() {
	s := subjects.Default()
	a, err := s.Parse("rbee.hb.worker.gpu-node-1.llama-0")
	fmt.Println(a.Kind, a.HiveID, a.WorkerID, err)
	_, err = s.Parse("rbee.hb.worker.gpu-node-1.bad*id")
	fmt.Println(err)
	// Output:
	// worker gpu-node-1 llama-0 <nil>
	// invalid id: worker id "bad*id" may only contain A-Z a-z 0-9 _ -
}

func ExampleValidateID() {
	fmt.Println(subjects.ValidateID("hive id", "gpu-node-1"))
	fmt.Println(subjects.ValidateID("hive id", "gpu.node"))
	// Output:
	// <nil>
	// invalid id: hive id "gpu.node" may only contain A-Z a-z 0-9 _ -
}

func ExampleScheme_WorkersBucket() {
	s := subjects.Default()
	fmt.Println(s.WorkersBucket(), s.HivesBucket(), subjects.WorkerKey("gpu-node-1", "llama-0"))
	// Output:
	// rbee_workers rbee_hives gpu-node-1.llama-0
}
