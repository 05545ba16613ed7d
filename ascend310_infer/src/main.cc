/**
 * Ascend 310 inference for the kidney/tumour segmentation windows (step 2 of the 310 flow).
 *
 *   ./out/main --mindir_path=FILE --input_path=BINS/00_data --output_path=RESULTS [--device_id=0]
 *
 * Every regular file <name>.bin in input_path is one input tensor in raw float32 (the model's input
 * shape, C order, as preprocess.py writes it). Output i of the model is written to
 * output_path/<name>_<i>.bin as raw bytes (float32 logits). The Python stand-in
 * ascend310_infer/mindir_runner.py keeps the same contract, so postprocess.py reads either.
 *
 * Written against the MindSpore C++ inference API (include/api/{context,model,serialization,types}.h:
 * Serialization::Load, Model::Build, Model::GetInputs, Model::Predict, MSTensor). It could not be
 * compiled on the development machines (no MindSpore C++ SDK there); build it with build.sh on an
 * Ascend 310 host with the Ascend MindSpore package installed.
 */
#include <sys/time.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/serialization.h"
#include "include/api/status.h"
#include "include/api/types.h"

namespace fs = std::filesystem;

namespace {

struct Options {
  std::string mindir_path;
  std::string input_path;
  std::string output_path;
  uint32_t device_id = 0;
};

void PrintUsage(const char *program) {
  std::cerr << "usage: " << program
            << " --mindir_path=FILE --input_path=DIR --output_path=DIR [--device_id=N]" << std::endl;
}

bool ParseOptions(int argc, char **argv, Options *options) {
  for (int i = 1; i < argc; ++i) {
    std::string arg(argv[i]);
    size_t equals = arg.find('=');
    if (arg.rfind("--", 0) != 0 || equals == std::string::npos) {
      std::cerr << "error: unexpected argument " << arg << std::endl;
      return false;
    }
    std::string key = arg.substr(2, equals - 2);
    std::string value = arg.substr(equals + 1);
    if (key == "mindir_path") {
      options->mindir_path = value;
    } else if (key == "input_path") {
      options->input_path = value;
    } else if (key == "output_path") {
      options->output_path = value;
    } else if (key == "device_id") {
      try {
        options->device_id = static_cast<uint32_t>(std::stoul(value));
      } catch (const std::exception &) {
        std::cerr << "error: --device_id must be a non-negative integer, got " << value << std::endl;
        return false;
      }
    } else {
      std::cerr << "error: unknown option --" << key << std::endl;
      return false;
    }
  }
  if (options->mindir_path.empty() || options->input_path.empty() || options->output_path.empty()) {
    std::cerr << "error: --mindir_path, --input_path and --output_path are required" << std::endl;
    return false;
  }
  return true;
}

// Sorted, so runs are reproducible and logs comparable with mindir_runner.py.
std::vector<fs::path> ListInputs(const fs::path &folder) {
  std::vector<fs::path> inputs;
  for (const auto &entry : fs::directory_iterator(folder)) {
    if (entry.is_regular_file() && entry.path().extension() == ".bin") {
      inputs.push_back(entry.path());
    }
  }
  std::sort(inputs.begin(), inputs.end());
  return inputs;
}

bool ReadBytes(const fs::path &path, std::vector<char> *bytes) {
  std::ifstream stream(path, std::ios::binary | std::ios::ate);
  if (!stream) {
    return false;
  }
  std::streamsize size = stream.tellg();
  stream.seekg(0, std::ios::beg);
  bytes->resize(static_cast<size_t>(size));
  return static_cast<bool>(stream.read(bytes->data(), size));
}

// Written under a temporary name and renamed, so an interrupted run leaves no half result behind.
bool WriteBytes(const fs::path &path, const void *data, size_t size) {
  fs::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream stream(tmp, std::ios::binary | std::ios::trunc);
    if (!stream) {
      return false;
    }
    stream.write(static_cast<const char *>(data), static_cast<std::streamsize>(size));
    if (!stream) {
      return false;
    }
  }
  std::error_code error;
  fs::rename(tmp, path, error);
  return !error;
}

double NowMs() {
  struct timeval now;
  gettimeofday(&now, nullptr);
  return now.tv_sec * 1000.0 + now.tv_usec / 1000.0;
}

}  // namespace

int main(int argc, char **argv) {
  Options options;
  if (!ParseOptions(argc, argv, &options)) {
    PrintUsage(argv[0]);
    return 2;
  }
  if (!fs::is_regular_file(options.mindir_path)) {
    std::cerr << "error: MindIR file not found: " << options.mindir_path << std::endl;
    return 2;
  }
  if (!fs::is_directory(options.input_path)) {
    std::cerr << "error: input folder not found: " << options.input_path << std::endl;
    return 2;
  }
  std::vector<fs::path> inputs = ListInputs(options.input_path);
  if (inputs.empty()) {
    std::cerr << "error: no .bin inputs in " << options.input_path << std::endl;
    return 2;
  }
  std::error_code error;
  fs::create_directories(options.output_path, error);
  if (error) {
    std::cerr << "error: cannot create " << options.output_path << ": " << error.message() << std::endl;
    return 2;
  }

  auto context = std::make_shared<mindspore::Context>();
  auto ascend = std::make_shared<mindspore::AscendDeviceInfo>();
  ascend->SetDeviceID(options.device_id);
  context->MutableDeviceInfo().push_back(ascend);

  mindspore::Graph graph;
  mindspore::Status status =
      mindspore::Serialization::Load(options.mindir_path, mindspore::ModelType::kMindIR, &graph);
  if (status != mindspore::kSuccess) {
    std::cerr << "error: cannot load MindIR " << options.mindir_path << std::endl;
    return 1;
  }
  mindspore::Model model;
  status = model.Build(mindspore::GraphCell(graph), context);
  if (status != mindspore::kSuccess) {
    std::cerr << "error: building the model for device " << options.device_id << " failed" << std::endl;
    return 1;
  }
  std::vector<mindspore::MSTensor> model_inputs = model.GetInputs();
  if (model_inputs.size() != 1) {
    std::cerr << "error: the model has " << model_inputs.size() << " inputs, expected 1" << std::endl;
    return 1;
  }
  const mindspore::MSTensor &input_info = model_inputs[0];
  const size_t expected_bytes = input_info.DataSize();

  double total_ms = 0.0;
  std::vector<char> bytes;
  for (const fs::path &input : inputs) {
    if (!ReadBytes(input, &bytes)) {
      std::cerr << "error: cannot read " << input << std::endl;
      return 1;
    }
    if (bytes.size() != expected_bytes) {
      std::cerr << "error: " << input << " has " << bytes.size() << " bytes, the model input takes "
                << expected_bytes << std::endl;
      return 1;
    }
    std::vector<mindspore::MSTensor> feed;
    feed.emplace_back(input_info.Name(), input_info.DataType(), input_info.Shape(), bytes.data(), bytes.size());
    std::vector<mindspore::MSTensor> outputs;
    double start_ms = NowMs();
    status = model.Predict(feed, &outputs);
    total_ms += NowMs() - start_ms;
    if (status != mindspore::kSuccess) {
      std::cerr << "error: prediction failed for " << input << std::endl;
      return 1;
    }
    for (size_t i = 0; i < outputs.size(); ++i) {
      std::shared_ptr<const void> data = outputs[i].Data();
      fs::path result = fs::path(options.output_path) / (input.stem().string() + "_" + std::to_string(i) + ".bin");
      if (!WriteBytes(result, data.get(), outputs[i].DataSize())) {
        std::cerr << "error: cannot write " << result << std::endl;
        return 1;
      }
    }
  }
  std::cout << "ran " << inputs.size() << " input(s), mean inference time " << total_ms / inputs.size()
            << " ms; results in " << options.output_path << std::endl;
  return 0;
}
