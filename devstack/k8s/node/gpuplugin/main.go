// gpuplugin: a fake GPU device plugin for the real node (kubelet device-plugin API v1beta1).
//
// It serves the DevicePlugin gRPC service on <dir>/<socket>, registers it with the kubelet's
// Registration service (<dir>/kubelet.sock), and advertises -count healthy devices of
// -resource (default nvidia.com/gpu), named fake-gpu-0 .. fake-gpu-<count-1>. Allocate
// answers the env NVIDIA_VISIBLE_DEVICES=<ids, comma-separated> and no device nodes, mounts
// or annotations: a container sees which "GPUs" it got, nothing more.
//
// The kubelet removes the content of its device-plugins directory when it starts, so this
// plugin polls its own socket and the kubelet's: when its socket is gone it serves anew and
// registers again; when kubelet.sock is a new file (another inode) it registers again. Real
// plugins (NVIDIA's k8s-device-plugin) do the same with fsnotify.
//
// Reference: https://kubernetes.io/docs/concepts/extend-kubernetes/compute-storage-net/device-plugins/
// and k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1 (api.proto, constants.go).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	resource string
	devices  []*pluginapi.Device
	stop     chan struct{} // closed when the plugin exits: ends every ListAndWatch stream
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

func (p *plugin) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return err
	}
	log.Printf("ListAndWatch: advertised %d healthy %s", len(p.devices), p.resource)
	select { // the devices never change: hold the stream open until either side ends
	case <-stream.Context().Done():
	case <-p.stop:
	}
	return nil
}

func (p *plugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return &pluginapi.PreferredAllocationResponse{}, nil
}

func (p *plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	answer := &pluginapi.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		ids := strings.Join(c.DevicesIds, ",")
		log.Printf("Allocate: %s", ids)
		answer.ContainerResponses = append(answer.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"NVIDIA_VISIBLE_DEVICES": ids},
		})
	}
	return answer, nil
}

func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// serve listens on path (removing a stale socket first) and serves p there.
func serve(p *plugin, path string) (*grpc.Server, error) {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	listener, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	server := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(server, p)
	go func() {
		if err := server.Serve(listener); err != nil {
			log.Printf("serve %s: %v", path, err)
		}
	}()
	return server, nil
}

// register tells the kubelet at kubeletSocket about the plugin serving on endpoint (a name
// in the same directory).
func register(kubeletSocket, endpoint, resource string) error {
	conn, err := grpc.NewClient("unix://"+kubeletSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     endpoint,
		ResourceName: resource,
		Options:      &pluginapi.DevicePluginOptions{},
	})
	return err
}

// inode is the inode number of path, 0 when it does not exist.
func inode(path string) uint64 {
	info, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

func main() {
	dir := flag.String("dir", pluginapi.DevicePluginPath, "the kubelet's device-plugins directory")
	socket := flag.String("socket", "rolegate-fake-gpu.sock", "this plugin's socket name in -dir")
	resource := flag.String("resource", "nvidia.com/gpu", "the extended resource advertised")
	count := flag.Int("count", 4, "how many healthy devices to advertise")
	poll := flag.Duration("poll", 500*time.Millisecond, "how often the sockets are checked")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if *count < 0 {
		log.Fatalf("-count must be >= 0, not %d", *count)
	}
	p := &plugin{resource: *resource, stop: make(chan struct{})}
	for i := 0; i < *count; i++ {
		p.devices = append(p.devices, &pluginapi.Device{ID: fmt.Sprintf("fake-gpu-%d", i), Health: pluginapi.Healthy})
	}
	own := filepath.Join(*dir, *socket)
	kubeletSocket := filepath.Join(*dir, filepath.Base(pluginapi.KubeletSocket))

	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	var once sync.Once
	quit := func() { once.Do(func() { close(p.stop) }) }

	var server *grpc.Server
	var registeredTo uint64 // the inode of the kubelet.sock registered with; 0: not registered
	ticker := time.NewTicker(*poll)
	defer ticker.Stop()
	log.Printf("fake GPU plugin: %d x %s on %s", *count, *resource, own)
	for {
		if server == nil || inode(own) == 0 { // first start, or the kubelet cleaned the directory
			if server != nil {
				log.Printf("%s is gone (kubelet restarted?): serving again", own)
				server.Stop()
			}
			var err error
			if server, err = serve(p, own); err != nil {
				log.Printf("serve %s: %v (retrying)", own, err)
				server = nil
			}
			registeredTo = 0
		}
		if kubelet := inode(kubeletSocket); server != nil && kubelet != 0 && kubelet != registeredTo {
			if err := register(kubeletSocket, *socket, *resource); err != nil {
				log.Printf("register with %s: %v (retrying)", kubeletSocket, err)
			} else {
				registeredTo = kubelet
				log.Printf("registered with the kubelet as %s (%d devices)", *resource, *count)
			}
		}
		select {
		case s := <-signals:
			log.Printf("%v: stopping", s)
			quit()
			if server != nil {
				server.Stop()
			}
			_ = os.Remove(own)
			return
		case <-ticker.C:
		}
	}
}
